"""Where a benchmark worker's CPU goes: Celery's consumer thread, each task's body, the rest.

The Stepwise workers of `bench.run` import this module (`celery worker -I bench.taskcpu`).
Around every task body (Celery's `task_prerun` and `task_postrun`) it notes the running
thread's CPU time and context switches (`getrusage(RUSAGE_THREAD)`, Linux), summed by
task name. `bench.run` asks every worker for its sums with the `bench_taskcpu` remote
control command before and after a scenario, and takes the difference.

What is not in a task body is the consumer's own thread (reading the broker, task
events, handing tasks to the pool) or the rest: the pool threads around the body
(Celery's tracing, the acknowledgement), and other threads of ours (the delta
publisher, the threads tools run on).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import defaultdict
from typing import Any

from celery.signals import task_postrun, task_prerun
from celery.worker.control import inspect_command

# Per task name: [tasks, user s, system s, voluntary switches, involuntary switches].
FIELDS = ("tasks", "user_s", "system_s", "voluntary_switches", "involuntary_switches")
_sums: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(FIELDS))
_lock = threading.Lock()
_started = threading.local()
_MAIN = threading.main_thread().ident or 0  # Celery's consumer runs on the main thread


def _thread_usage() -> tuple[float, float, int, int]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime, usage.ru_nvcsw, usage.ru_nivcsw


@task_prerun.connect
def _body_begins(**_: Any) -> None:
    _started.usage = _thread_usage()


@task_postrun.connect
def _body_ends(task: Any = None, **_: Any) -> None:
    before = getattr(_started, "usage", None)
    if before is None or task is None:
        return
    after = _thread_usage()
    _started.usage = None
    with _lock:
        sums = _sums[task.name]
        sums[0] += 1
        for i, (a, b) in enumerate(zip(after, before, strict=True), 1):
            sums[i] += a - b


def snapshot() -> dict[str, Any]:
    """This process's CPU so far: all of it, the consumer's (main) thread, the task bodies."""
    with _lock:
        tasks = {name: dict(zip(FIELDS, sums, strict=True)) for name, sums in _sums.items()}
    return {
        "pid": os.getpid(),
        "process_s": time.process_time(),
        # The thread's own CPU clock, to the nanosecond: /proc counts in ticks of 10 ms.
        "consumer_s": time.clock_gettime(time.pthread_getcpuclockid(_MAIN)),
        "tasks": tasks,
    }


@inspect_command(name="bench_taskcpu")  # type: ignore[misc]
def bench_taskcpu(state: Any, **_: Any) -> dict[str, Any]:
    """The remote control command `bench.run` calls: `snapshot()`."""
    return snapshot()


def difference(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """What the workers spent between two rounds of snapshots, summed over the workers
    that answered both: seconds in all, in the consumer threads, in the task bodies (and
    by task name, with the tasks counted and their context switches), and the rest."""
    earlier = {s["pid"]: s for s in before}
    total = consumer = bodies = 0.0
    by_task: dict[str, dict[str, float]] = {}
    for now in after:
        then = earlier.get(now["pid"])
        if then is None:
            continue
        total += now["process_s"] - then["process_s"]
        consumer += now["consumer_s"] - then["consumer_s"]
        for name, sums in now["tasks"].items():
            old = then["tasks"].get(name, {})
            grown = by_task.setdefault(name, dict.fromkeys(FIELDS, 0.0))
            for field in FIELDS:
                grown[field] += sums[field] - old.get(field, 0.0)
    for sums in by_task.values():
        bodies += sums["user_s"] + sums["system_s"]
    by_task = {name: sums for name, sums in by_task.items() if sums["tasks"]}
    return {
        "process_s": total,
        "consumer_s": consumer,
        "bodies_s": bodies,
        "rest_s": total - consumer - bodies,
        "by_task": by_task,
    }
