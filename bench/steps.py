"""Benchmark a step's own cost, in process: no Celery, no broker, no network.

Calls the step functions that the Celery tasks wrap (`runs.accept`, `steps.start`,
`steps.model_step`, `tool_steps.tool_step`) directly, one run after another, for
runs of `bench_scripted` (the in-process scripted model, a tool that returns at
once) against a scratch Postgres database, publishing every event to Redis. What
it measures is what a step adds on top of a Celery hop: its transactions, its
publishing and its decisions.

    .venv/bin/python -m bench.steps                  # 200 runs
    .venv/bin/python -m bench.steps --runs 50 --profile
    .venv/bin/python -m bench.steps --runs 50 --pause 0.2

`--pause` sleeps before each step, as a step on the workers follows a wait (for the
broker, the model, the tool); by default the steps run back to back.

It prints, per kind of step (accept, start, model, tool): CPU and wall time per
step (median and p99) and SQL statements per step, and writes them to
bench/results/steps.json. `--profile` adds the functions that took the most CPU
(cProfile, cumulative) to the output.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlmodel import col, select

from bench.common import LOCAL_DATABASE, LOCAL_REDIS, machine, percentiles, scratch_database
from storage import Run
from tasks import runs, steps, tool_steps
from tasks.records import NOTHING, Next, Where
from tasks.runtime import Runtime, runtime_for
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "steps.json"
KINDS = ("accept", "start", "model", "tool")


class Meter:
    """CPU, wall time and SQL statements per call, by kind of step."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause  # seconds slept before each call, outside what is measured
        self.cpu: dict[str, list[float]] = defaultdict(list)
        self.wall: dict[str, list[float]] = defaultdict(list)
        self.statements: dict[str, list[int]] = defaultdict(list)
        self._count = 0

    def on_statement(self, *_: Any) -> None:
        """A SQLAlchemy `before_cursor_execute` listener."""
        self._count += 1

    def measure(self, kind: str, call: Callable[[], Any]) -> Any:
        """`call()`, its cost noted under `kind`."""
        if self.pause:
            time.sleep(self.pause)
        self._count = 0
        cpu, wall = time.process_time(), time.perf_counter()
        result = call()
        self.cpu[kind].append(time.process_time() - cpu)
        self.wall[kind].append(time.perf_counter() - wall)
        self.statements[kind].append(self._count)
        return result

    def summary(self) -> dict[str, Any]:
        """Per kind: count, CPU and wall percentiles (ms), statements per step."""
        out: dict[str, Any] = {}
        for kind in KINDS:
            if not self.cpu[kind]:
                continue
            out[kind] = {
                "count": len(self.cpu[kind]),
                "cpu_ms": percentiles(self.cpu[kind]),
                "wall_ms": percentiles(self.wall[kind]),
                "statements": round(sum(self.statements[kind]) / len(self.statements[kind]), 2),
            }
        everything = [c for kind in ("start", "model", "tool") for c in self.cpu[kind]]
        out["step_cpu_ms_mean"] = round(sum(everything) / len(everything) * 1000, 3)
        return out


def one_run(rt: Runtime, meter: Meter) -> str:
    """Accept, start and step one run to its end, as the workers would, one task at a time."""
    where = Where(task_id=None, queue="bench")
    accept = partial(runs.accept, rt, agent="bench_scripted", input="Look up two keys.")
    run_id: str = meter.measure("accept", accept)[0]
    after: Next = meter.measure("start", partial(steps.start, rt, run_id))
    while after != NOTHING:
        for number, _queue in after.tools:
            meter.measure("tool", partial(tool_steps.tool_step, rt, run_id, number, where))
        if after.model is None:
            break
        after = meter.measure("model", partial(steps.model_step, rt, run_id, after.model, where))
    return run_id


@contextmanager
def profiled(enabled: bool) -> Iterator[cProfile.Profile | None]:
    """A cProfile profiler around the block, when enabled."""
    if not enabled:
        yield None
        return
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        yield profiler
    finally:
        profiler.disable()


def top_functions(profiler: cProfile.Profile, limit: int = 40) -> str:
    """The functions with the most cumulative CPU time, as pstats prints them."""
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(limit)
    return text.getvalue()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then step `args.runs` runs and measure each step."""
    with scratch_database(args.database_url) as url:
        settings = Settings(
            database_url=url, redis_url=args.redis_url, agents_modules=("bench.agents",)
        )
        rt = runtime_for(settings)
        meter = Meter(args.pause)
        event.listen(rt.store.engine, "before_cursor_execute", meter.on_statement)
        for _ in range(args.warmup):
            one_run(rt, Meter())
        ended: list[str] = []
        with profiled(args.profile) as profiler:
            for _ in range(args.runs):
                ended.append(one_run(rt, meter))
        with rt.store.reading() as db:
            statuses = {run.status for run in db.exec(select(Run).where(col(Run.id).in_(ended)))}
        if statuses != {"succeeded"}:
            raise SystemExit(f"runs ended {sorted(statuses)}, not all succeeded")
        rt.store.engine.dispose()
        figures = {"runs": args.runs, **meter.summary()}
        if profiler is not None:
            figures["profile"] = top_functions(profiler)
        return figures


def table(figures: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| step | count | CPU p50 / p99 | wall p50 / p99 | SQL statements |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        if kind in figures:
            f = figures[kind]
            lines.append(
                f"| {kind} | {f['count']} | {f['cpu_ms']['p50']} / {f['cpu_ms']['p99']} ms "
                f"| {f['wall_ms']['p50']} / {f['wall_ms']['p99']} ms | {f['statements']} |"
            )
    lines.append(f"\nCPU per step (start, model, tool), mean: {figures['step_cpu_ms_mean']} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table, write the JSON."""
    env = os.environ
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--runs", type=int, default=200, help="runs measured")
    add("--warmup", type=int, default=10, help="runs stepped first and not measured")
    add("--database-url", default=env.get("STEPWISE_DATABASE_URL") or LOCAL_DATABASE)
    add("--redis-url", default=env.get("STEPWISE_REDIS_URL") or LOCAL_REDIS)
    add("--output", type=Path, default=RESULTS, help="where the JSON figures go")
    add("--profile", action="store_true", help="cProfile (CPU time) the measured runs")
    add("--pause", type=float, default=0.0, help="seconds slept before each measured step")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    figures = run_benchmark(args)
    profile = figures.pop("profile", None)
    figures["machine"] = machine(args.database_url, args.redis_url)
    figures["command"] = shlex.join(["python", "-m", "bench.steps", *sys.argv[1:]])
    figures["date"] = time.strftime("%Y-%m-%d %H:%M")
    print(table(figures))
    if profile:
        print(profile)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
