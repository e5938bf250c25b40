"""Followers at random moments, blocking and asyncio, that disconnect at random points and
resume after the last number they saw: each sees the run's stored events exactly once, in
order, and each delta between its step's model.started and model.completed.

Sixteen runs of eight agents on a real worker: parallel tool calls, failing tools, runs
held at gates the test opens at random moments, deadlines, step limits. Three followers a
run: one from right after `start_run`, one from a random moment, one after the run ended.
Every choice comes from one seeded `random.Random`, drawn before anything starts.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage import RedisFanout
from storage.events import (
    MODEL_COMPLETED,
    MODEL_DELTA,
    MODEL_RETRACTED,
    MODEL_STARTED,
    TERMINAL_EVENTS,
)
from tasks import client
from tasks.runtime import current_runtime
from tests.test_integration_support import (
    events,
    open_gate,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.services

SEED = 20261121
RUNS = 16
# tests/agents.py and tests/test_integration_support.py; the gated ones wait for the test.
AGENTS = ["parallel", "gated", "faulty", "looper", "hasty", "pair", "tallying", "slowpoke"]
GATED = {"gated", "tallying"}
PATIENCE = 60.0  # seconds a follower gives a run before it fails the test

Event = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """One follower: when it starts, how it reads, and how many events each connection gets."""

    run: int
    start: str  # "at once" (right after start_run), "later" (after `delay`), "after the end"
    asynchronous: bool
    delay: float
    chunks: tuple[int, ...]  # events read per connection before it disconnects


def plans(chance: random.Random) -> list[Plan]:
    return [
        Plan(
            run=i,
            start=start,
            asynchronous=chance.random() < 0.5,
            delay=chance.uniform(0, 2.0),
            chunks=tuple(chance.randint(1, 8) for _ in range(40)),
        )
        for i in range(RUNS)
        for start in ("at once", "later", "after the end")
    ]


def _ended(seen: list[Event]) -> bool:
    return bool(seen) and seen[-1]["type"] in TERMINAL_EVENTS


def follow_in_pieces(run_id: str, plan: Plan) -> tuple[list[Event], int]:
    """Follow with `tasks.client.follow`, hanging up after each chunk and resuming after the
    last number seen; every event shown, and how many connections it took."""
    seen: list[Event] = []
    last, connections = 0, 0
    chunks = iter(plan.chunks)
    while not _ended(seen):
        connections += 1
        budget = next(chunks)
        stream = client.follow(run_id, after=last, timeout=PATIENCE)
        try:
            for event in stream:
                seen.append(event)
                last = event["seq"] if event["seq"] is not None else last
                budget -= 1
                if budget == 0:
                    break
            else:
                break  # the stream ended: the terminal event was shown
        finally:
            stream.close()
    return seen, connections


async def afollow_in_pieces(run_id: str, plan: Plan) -> tuple[list[Event], int]:
    """`follow_in_pieces` with `tasks.client.afollow`."""
    seen: list[Event] = []
    last, connections = 0, 0
    chunks = iter(plan.chunks)
    while not _ended(seen):
        connections += 1
        budget = next(chunks)
        stream = client.afollow(run_id, after=last, timeout=PATIENCE)
        try:
            async for event in stream:
                seen.append(event)
                last = event["seq"] if event["seq"] is not None else last
                budget -= 1
                if budget == 0:
                    break
            else:
                break
        finally:
            await stream.aclose()
    return seen, connections


def _wait_for_the_end(run_id: str) -> None:
    wait_until(f"run {run_id} to end", lambda: client.get_run(run_id).done, within=PATIENCE)


def start_follower(run_id: str, plan: Plan, loop: asyncio.AbstractEventLoop) -> Future[Any]:
    """Start following in a thread of its own, or as a task on `loop`."""
    if plan.asynchronous:

        async def go() -> tuple[list[Event], int]:
            if plan.start == "later":
                await asyncio.sleep(plan.delay)
            elif plan.start == "after the end":
                await asyncio.to_thread(_wait_for_the_end, run_id)
            return await afollow_in_pieces(run_id, plan)

        return asyncio.run_coroutine_threadsafe(go(), loop)

    result: Future[Any] = Future()

    def run() -> None:
        try:
            if plan.start == "later":
                time.sleep(plan.delay)  # a random moment, not a wait for something
            elif plan.start == "after the end":
                _wait_for_the_end(run_id)
            result.set_result(follow_in_pieces(run_id, plan))
        except BaseException as error:  # handed to the test's thread
            result.set_exception(error)

    threading.Thread(target=run, name=f"follower-{plan.run}-{plan.start}", daemon=True).start()
    return result


@pytest.fixture
def event_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An asyncio loop in a thread of its own, for the asyncio followers."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="followers-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def check_deltas(seen: list[Event]) -> int:
    """Each delta comes after its attempt's model.started and before the step's model.completed
    (or the attempt's model.retracted); how many there were."""
    open_attempts: dict[int, int] = {}  # step → its attempt now streaming
    count = 0
    for event in seen:
        kind, step = event["type"], event["step"]
        if kind == MODEL_STARTED:
            open_attempts[step] = event["data"]["attempt"]
        elif kind in (MODEL_COMPLETED, MODEL_RETRACTED):
            open_attempts.pop(step, None)
        elif kind == MODEL_DELTA:
            count += 1
            assert open_attempts.get(step) == event["data"]["attempt"], (event, open_attempts)
    return count


def test_followers_at_random_moments_that_hang_up_at_random_see_every_stored_event_once(
    worker: Any,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    event_loop_thread: asyncio.AbstractEventLoop,
):
    chance = random.Random(SEED)
    followers = plans(chance)
    gate_delays = [chance.uniform(0.2, 2.5) for _ in range(RUNS)]
    start_worker(worker, monkeypatch, tmp_path, concurrency=16)

    run_ids: list[str] = []
    following: list[tuple[Plan, Future[Any]]] = []
    timers: list[threading.Timer] = []
    for i in range(RUNS):
        agent = AGENTS[i % len(AGENTS)]
        run_id = client.start_run(agent, f"run {i}")
        run_ids.append(run_id)
        for plan in followers[3 * i : 3 * i + 3]:
            following.append((plan, start_follower(run_id, plan, event_loop_thread)))
        if agent in GATED:
            timers.append(threading.Timer(gate_delays[i], open_gate, args=(tmp_path, run_id)))
            timers[-1].start()

    results = [(plan, future.result(PATIENCE)) for plan, future in following]
    for timer in timers:
        timer.join()

    statuses = {client.get_run(r).status for r in run_ids}
    connections = deltas = 0
    for plan, (seen, used) in results:
        run_id = run_ids[plan.run]
        log = events(database_url, run_id)
        shown = [(e["seq"], e["type"], e["step"]) for e in seen if e["seq"] is not None]
        assert shown == log, (plan, run_id)
        assert seen[-1]["type"] in TERMINAL_EVENTS
        deltas += check_deltas(seen)
        connections += used
    # Every follower hung up: the process listens to no run any more.
    fanout = current_runtime().store.fanout
    assert isinstance(fanout, RedisFanout)
    wait_until("the hub to leave every run's channel", lambda: fanout.channels == 0)
    assert statuses == {"succeeded", "failed", "timed_out"}
    assert connections > 2 * len(results)  # most followers hung up and resumed more than once
    assert deltas > 0
    print(
        f"\n{len(results)} followers of {RUNS} runs ({sorted(statuses)}): "
        f"{connections} connections, {deltas} deltas shown"
    )
