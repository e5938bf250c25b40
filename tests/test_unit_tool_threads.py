"""The tool threads: reused once their call is done, never waited for, ended when idle."""

import threading
import time

from tasks.tool_threads import Threads


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def _run(threads: Threads, call) -> threading.Thread:
    """Run `call` and say which thread ran it, once it has."""
    ran: list[threading.Thread] = []
    done = threading.Event()

    def wrapped() -> None:
        call()
        ran.append(threading.current_thread())
        done.set()

    threads.run(wrapped)
    assert done.wait(5)
    return ran[0]


def test_a_thread_whose_call_is_done_runs_the_next_call():
    threads = Threads()
    first = _run(threads, lambda: None)
    _wait_until(lambda: threads.idle_threads == 1)
    second = _run(threads, lambda: None)
    assert second is first
    assert first.daemon


def test_a_call_that_never_returns_does_not_hold_up_the_next():
    threads = Threads()
    release = threading.Event()
    stuck_on: list[threading.Thread] = []
    threads.run(lambda: (stuck_on.append(threading.current_thread()), release.wait(10)))
    _wait_until(lambda: bool(stuck_on))
    other = _run(threads, lambda: None)
    assert other is not stuck_on[0]
    release.set()
    _wait_until(lambda: threads.idle_threads == 2)


def test_a_call_that_raises_keeps_its_thread_for_the_next(caplog):
    threads = Threads()

    def boom() -> None:
        raise RuntimeError("boom")

    threads.run(boom)
    _wait_until(lambda: threads.idle_threads == 1)
    assert "a call on a tool thread raised" in caplog.text
    _run(threads, lambda: None)


def test_an_idle_thread_ends_and_a_call_after_it_gets_a_new_one():
    threads = Threads(idle=0.05)
    first = _run(threads, lambda: None)
    _wait_until(lambda: not first.is_alive())
    assert threads.idle_threads == 0
    assert _run(threads, lambda: None) is not first


def test_many_calls_at_once_each_run_exactly_once():
    threads = Threads(idle=0.01)  # threads come and go while calls arrive
    lock = threading.Lock()
    counts: dict[int, int] = {}
    finished = threading.Semaphore(0)

    def call(n: int):
        def run() -> None:
            with lock:
                counts[n] = counts.get(n, 0) + 1
            finished.release()

        return run

    for n in range(500):
        threads.run(call(n))
        if n % 50 == 0:
            time.sleep(0.02)  # let idle threads time out between bursts
    for _ in range(500):
        assert finished.acquire(timeout=5)
    assert counts == dict.fromkeys(range(500), 1)
