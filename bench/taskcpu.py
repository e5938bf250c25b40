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

Inside the bodies, it also times the parts of a step (`PARTS`): it wraps the functions
that do them, in their modules, and sums each call's thread CPU time (`time.thread_time`)
by function. `parts_ms` turns the sums into a step's parts: a model step's claim, call
and record, a tool step's claim, tool and record, and sending what follows.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_init
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


# The functions timed: (module, function) by name. The tool step's runs the tool on a
# thread of its own (`tasks.tool_threads`) and waits: its own thread's CPU leaves the
# tool's out, as the bare runs' leave out the model's and the tool's.
PARTS = {
    "model_step": ("tasks.steps", "model_step"),
    "model_claim": ("tasks.steps", "_begin"),
    "model_record": ("tasks.steps", "_record_response"),
    "tool_step": ("tasks.tool_steps", "tool_step"),
    "tool_run": ("tasks.tool_steps", "_run_tool"),
    "tool_record": ("tasks.tool_steps", "_record"),
    "send": ("tasks.app", "dispatch"),
}
_parts: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # name: [calls, CPU s]


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent = time.thread_time() - began
            with _lock:
                sums = _parts[name]
                sums[0] += 1
                sums[1] += spent

    return timed


@worker_init.connect
def _wrap_parts(**_: Any) -> None:
    """In a worker, put `_timed` around each function of `PARTS`, where its callers look
    it up: in its module (the steps call each other by module-level name)."""
    for name, (module_name, function) in PARTS.items():
        module = importlib.import_module(module_name)
        setattr(module, function, _timed(name, getattr(module, function)))


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
        parts = {name: list(sums) for name, sums in _parts.items()}
    return {
        "pid": os.getpid(),
        "process_s": time.process_time(),
        # The thread's own CPU clock, to the nanosecond: /proc counts in ticks of 10 ms.
        "consumer_s": time.clock_gettime(time.pthread_getcpuclockid(_MAIN)),
        "tasks": tasks,
        "parts": parts,
    }


@inspect_command(name="bench_taskcpu")  # type: ignore[misc]
def bench_taskcpu(state: Any, **_: Any) -> dict[str, Any]:
    """The remote control command `bench.run` calls: `snapshot()`."""
    return snapshot()


def difference(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """What the workers spent between two rounds of snapshots, summed over the workers
    that answered both: seconds in all, in the consumer threads, in the task bodies (and
    by task name, with the tasks counted and their context switches), and the rest; and
    the calls and CPU seconds of each of `PARTS`."""
    earlier = {s["pid"]: s for s in before}
    total = consumer = bodies = 0.0
    by_task: dict[str, dict[str, float]] = {}
    parts = {name: [0.0, 0.0] for name in PARTS}
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
        for name, (calls, cpu) in now.get("parts", {}).items():
            old_calls, old_cpu = then.get("parts", {}).get(name, (0, 0.0))
            parts[name][0] += calls - old_calls
            parts[name][1] += cpu - old_cpu
    for sums in by_task.values():
        bodies += sums["user_s"] + sums["system_s"]
    by_task = {name: sums for name, sums in by_task.items() if sums["tasks"]}
    return {
        "process_s": total,
        "consumer_s": consumer,
        "bodies_s": bodies,
        "rest_s": total - consumer - bodies,
        "by_task": by_task,
        "parts": parts,
    }


def parts_ms(parts: dict[str, list[float]]) -> dict[str, float]:
    """A step's parts, ms of CPU each, from `difference`'s `parts`: a model step's claim,
    call (the rest of its step function: the SDK, the stream, the deltas handed on) and
    record; a tool step's claim (the rest of its step function), tool (handing the call
    to its thread and waiting) and record; sending what follows a step. A claim, a tool
    and a record are per call of their function; a rest is what is left of its step
    function's CPU, per call of that function (a redelivered step may skip a record).
    A part whose function never ran is left out."""

    def calls(name: str) -> float:
        return parts.get(name, (0, 0.0))[0]

    def cpu(name: str) -> float:
        return parts.get(name, (0, 0.0))[1]

    def per_call(spent: float, name: str) -> float:
        return spent / calls(name) * 1000 if calls(name) else float("nan")

    model_rest = cpu("model_step") - cpu("model_claim") - cpu("model_record")
    tool_rest = cpu("tool_step") - cpu("tool_run") - cpu("tool_record")
    found = {
        "model claim": per_call(cpu("model_claim"), "model_claim"),
        "model call": per_call(model_rest, "model_step"),
        "model record": per_call(cpu("model_record"), "model_record"),
        "tool claim": per_call(tool_rest, "tool_step"),
        "tool": per_call(cpu("tool_run"), "tool_run"),
        "tool record": per_call(cpu("tool_record"), "tool_record"),
        "send": per_call(cpu("send"), "send"),
    }
    return {name: round(ms, 2) for name, ms in found.items() if not math.isnan(ms)}
