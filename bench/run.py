"""Benchmark the runtime on real workers: step overhead, concurrency, memory, fan-out.

Starts a fake model server (`bench.fakemodel`), Celery workers running Stepwise and a
baseline worker (`bench.baseline`), against a scratch Postgres database and Redis
under a key prefix of its own, then runs the scenarios:

- **baseline**: a bare Celery chain of no-op tasks (the hop), and one Postgres
  INSERT + COMMIT: every other figure is also given as a ratio to these.
- **overhead**: runs of `bench_scripted` (an in-process model, a tool that returns at
  once), one at a time. A step's overhead is the time from the previous step's record
  to its own: the hand-off, its transactions and publishing, with no model or tool time.
- **concurrency**: N runs of `bench` (the OpenAI adapter against the fake server, 3
  model calls of `--latency` s and 2 tool calls) sent at once, for each N of `--levels`;
  before them, as their floor, N bare runs (`bench.bare`): the same tasks on the same
  workers, Celery alone, a model step a sleep of `--latency` s.
- **memory**: the same with one worker process and `--memory-latency`, so every model
  call is in flight at once; the worker's peak RSS.
- **fanout**: `bench.follow` with no worker running, for `--fanout-seconds`: stored
  events committed at `--fanout-rate` a second over `--fanout-runs` runs, each run
  followed by `--fanout-followers`; commit to follower; then `model.delta` messages at
  `--fanout-delta-rate` a second, and how many reach the followers, how soon.

    .venv/bin/python -m bench.run                       # every scenario, the defaults
    .venv/bin/python -m bench.run --scenarios overhead --overhead-runs 20

It prints one table, writes the figures to bench/results/run.json, appends the table
with the machine and the command to docs/benchmarks.md, and plots throughput and
latency against concurrency to docs/img/bench-concurrency.png (`--no-record` skips the
last two).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import chain
from sqlalchemy import make_url

from bench import follow
from bench.bare import TASK as BARE_TASK
from bench.bare import shape as bare_shape
from bench.cluster import Cluster, Sampler, client_app, cluster, profiling, task_cpu
from bench.common import (
    LOCAL_DATABASE,
    LOCAL_REDIS,
    CpuClock,
    machine,
    percentiles,
    scratch_database,
)
from bench.report import DOC, PLOT, plot, record, table
from bench.taskcpu import difference, parts_ms
from storage.db import normalise_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "run.json"
SCENARIOS = ("baseline", "overhead", "concurrency", "memory", "fanout")
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")


@dataclass(frozen=True)
class Config:
    """What to run."""

    scenarios: tuple[str, ...] = SCENARIOS
    levels: tuple[int, ...] = (10, 100, 1000)
    latency: float = 1.0
    tools: str = "1,1"
    answer_words: int = 0  # the final answer's length; 0: the fake server's short answer
    tokens_per_second: float = 0.0  # how fast the fake server streams it; 0: all at once
    pool: str = "threads"
    concurrency: int = 250
    workers: int = 4  # a threads worker uses one core at most: more processes than cores
    overhead_runs: int = 30
    hops: int = 200
    inserts: int = 500
    memory_runs: int = 1000
    memory_latency: float = 60.0
    memory_concurrency: int = 1100  # -c of the one worker: room for every call at once
    memory_pool: str = "gevent"  # a greenlet costs less memory than a thread
    fanout_runs: int = 100
    fanout_followers: int = 10  # per run
    fanout_rate: float = 1000.0  # stored events per second, all runs together
    fanout_seconds: float = 10.0  # of stored events; then half as long of deltas
    fanout_delta_rate: float = 2000.0  # model.delta messages a second; 0: as fast as they go
    timeout: float = 600.0
    database_url: str = LOCAL_DATABASE
    redis_url: str = LOCAL_REDIS
    broker_url: str = ""  # empty: Redis (`redis_url`) is the broker too
    record: bool = True
    profile: bool = False
    output: Path = RESULTS


# Scenarios


def baseline(cfg: Config, found: Cluster, database_url: str) -> dict[str, Any]:
    """A bare Celery chain's hop and one INSERT + COMMIT, at their medians; and the CPU
    time a hop costs the baseline worker.

    The hops are `cfg.hops` chains of two no-op tasks, one chain after another, each
    hop the gap between a chain's two tasks. One long chain would not do: every message
    of a chain carries the rest of it, so the hops of a chain of 200 each carry and
    parse 100 signatures on average, and cost the worker nearly twice as much as a hop
    whose message carries one (a step's carries one at most: its chain's model step).
    """
    app = client_app(found.env)

    def hop() -> Any:
        # As a step's chain: the first stores no result, only the last, for `get`.
        first = app.signature("bench.hop", ([],)).set(ignore_result=True)
        return chain(first, app.signature("bench.hop"))

    for _ in range(10):  # warm
        hop().apply_async().get(timeout=60)
    clock = CpuClock({"worker": [found.others[1].pid]}, "")
    before = clock.read()
    gaps = []
    for _ in range(cfg.hops):
        first, second = hop().apply_async().get(timeout=cfg.timeout)
        gaps.append(second - first)
    after = clock.read()
    # Per task the worker ran: the first of each pair sends the second, the second
    # stores the chain's result.
    cpu_per_hop = cpu_seconds(clock.used(before, after)["worker"], before, after) / (2 * cfg.hops)
    raw = make_url(normalise_url(database_url)).set(drivername="postgresql")
    commits = []
    with psycopg.connect(raw.render_as_string(hide_password=False)) as connection:
        connection.execute(
            "CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, at timestamptz, data jsonb)"
        )
        connection.commit()
        for n in range(cfg.inserts):
            began = time.perf_counter()
            connection.execute(
                "INSERT INTO bench_baseline (at, data) VALUES (now(), %s)", (json.dumps({"n": n}),)
            )
            connection.commit()
            commits.append(time.perf_counter() - began)
    hop_ms, insert_ms = percentiles(gaps), percentiles(commits)
    return {
        "hop_ms": hop_ms,
        "insert_commit_ms": insert_ms,
        "unit_ms": round(hop_ms["p50"] + insert_ms["p50"], 2),
        "hop_cpu_ms": round(cpu_per_hop * 1000, 2),
    }


def cpu_seconds(cores: float, before: dict[str, Any], after: dict[str, Any]) -> float:
    """CPU seconds: `cores` used between two readings of a `CpuClock`."""
    return cores * float(after["at"] - before["at"])


def _send_runs(env: dict[str, str], agent: str, count: int) -> tuple[list[str], float]:
    """Send `count` runs by name, as another application would; their ids and when."""
    app = client_app(env)
    run_ids = [str(uuid.uuid4()) for _ in range(count)]
    began = time.time()
    with app.producer_or_acquire() as producer:
        for run_id in run_ids:
            app.send_task(
                "stepwise.start_run",
                kwargs={"run_id": run_id, "agent": agent, "input": "Look up two keys."},
                queue="celery",
                producer=producer,
            )
    return run_ids, began


def _wait_for_runs(database_url: str, run_ids: list[str], timeout: float) -> float:
    """Poll until every run has ended; when the last one did (database time)."""
    raw = make_url(normalise_url(database_url)).set(drivername="postgresql")
    deadline = time.monotonic() + timeout
    with psycopg.connect(raw.render_as_string(hide_password=False), autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT count(*), extract(epoch from max(finished_at)) FROM stepwise_runs "
                "WHERE id = ANY(%s) AND status = ANY(%s)",
                (run_ids, list(TERMINAL)),
            ).fetchone()
            assert row is not None
            if row[0] == len(run_ids):
                return float(row[1])
            time.sleep(0.1)
    raise SystemExit(f"the runs did not all end within {timeout:g} s")


def _runs_table(database_url: str, run_ids: list[str]) -> list[dict[str, Any]]:
    raw = make_url(normalise_url(database_url)).set(drivername="postgresql")
    with psycopg.connect(raw.render_as_string(hide_password=False)) as db:
        rows = db.execute(
            "SELECT r.id, r.status, extract(epoch from r.created_at), "
            "extract(epoch from r.started_at), extract(epoch from r.finished_at), "
            "coalesce(array_agg(extract(epoch from s.finished_at) ORDER BY s.number) "
            "FILTER (WHERE s.id IS NOT NULL), '{}'), count(s.id) "
            "FROM stepwise_runs r LEFT JOIN stepwise_steps s ON s.run_id = r.id "
            "WHERE r.id = ANY(%s) GROUP BY r.id",
            (run_ids,),
        ).fetchall()
    keys = ("id", "status", "created", "started", "finished", "step_ends", "steps")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def overhead(cfg: Config, found: Cluster) -> dict[str, Any]:
    """Runs of the scripted agent one at a time: the time each step adds."""
    database_url = found.env["STEPWISE_DATABASE_URL"]
    _send_and_wait(found, "bench_scripted", 3, cfg.timeout)  # warm the workers up
    gaps: list[float] = []
    runs = []
    for _ in range(cfg.overhead_runs):
        run_ids, _, _ = _send_and_wait(found, "bench_scripted", 1, cfg.timeout)
        runs.extend(_runs_table(database_url, run_ids))
    for run in runs:
        if run["status"] != "succeeded":
            raise SystemExit(f"run {run['id']} ended {run['status']}; see bench/results/logs")
        # The last step ends its run in its own transaction: no hand-off after it.
        ends = [float(run["started"]), *map(float, run["step_ends"])]
        gaps += [b - a for a, b in itertools.pairwise(ends)]
    return {"runs": len(runs), "steps_per_run": runs[0]["steps"], "step_ms": percentiles(gaps)}


def _send_and_wait(
    found: Cluster, agent: str, count: int, timeout: float
) -> tuple[list[str], float, float]:
    run_ids, began = _send_runs(found.env, agent, count)
    ended = _wait_for_runs(found.env["STEPWISE_DATABASE_URL"], run_ids, timeout)
    return run_ids, began, ended


def bare(cfg: Config, found: Cluster, count: int, database: str) -> dict[str, Any]:
    """`count` bare runs sent at once (`bench.bare`): the wall time and the workers' CPU
    per step of Celery alone, doing the tasks of as many runs on the same workers."""
    tasks = bare_shape(cfg.tools)
    ended = f"{found.env['STEPWISE_REDIS_KEY_PREFIX']}bare-ended:{uuid.uuid4().hex}"
    app = client_app(found.env)
    clock = CpuClock({"workers": found.worker_pids}, database)
    before, where_before = clock.read(), _cpu_snapshots(found)
    began = time.time()
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(
                BARE_TASK,
                (0, found.latency, tasks, ended, found.streaming),
                queue="celery",
                producer=producer,
            )
    store = redis.Redis.from_url(cfg.redis_url)
    deadline = time.monotonic() + cfg.timeout
    while store.llen(ended) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the bare runs did not all end within {cfg.timeout:g} s")
        time.sleep(0.05)
    last = max(float(at) for at in store.lrange(ended, 0, -1))
    after = clock.read()
    store.delete(ended)
    steps = count * (len(tasks) - 1)  # as for Stepwise's runs: the start is not a step
    worker_cpu = cpu_seconds(clock.used(before, after)["workers"], before, after)
    return {
        "wall_s": round(last - began, 2),
        "worker_cpu_ms_per_step": round(worker_cpu / steps * 1000, 2),
        "worker_cpu_where": _cpu_where(found, where_before, steps),
    }


def _cpu_snapshots(found: Cluster) -> list[dict[str, Any]] | None:
    """Every worker's `bench.taskcpu` snapshot, on a pool where it means something."""
    return task_cpu(found.env, len(found.worker_pids)) if found.threaded else None


def _cpu_where(
    found: Cluster, before: list[dict[str, Any]] | None, steps: int
) -> dict[str, Any] | None:
    """Where the workers' CPU went since `before` (`bench.taskcpu`): per step, in Celery's
    consumer threads, in task bodies and the rest; per task, by name, its body's CPU and
    context switches; per part of a step, its CPU (`parts_ms`). None where it was not
    measured."""
    if before is None:
        return None
    spent = difference(before, task_cpu(found.env, len(found.worker_pids)))
    per_task = {
        name: {
            "tasks": int(sums["tasks"]),
            "cpu_ms": round((sums["user_s"] + sums["system_s"]) / sums["tasks"] * 1000, 2),
            "system_ms": round(sums["system_s"] / sums["tasks"] * 1000, 2),
            "voluntary_switches": round(sums["voluntary_switches"] / sums["tasks"], 1),
            "involuntary_switches": round(sums["involuntary_switches"] / sums["tasks"], 1),
        }
        for name, sums in sorted(spent["by_task"].items())
    }
    per_step = {
        part: round(spent[f"{part}_s"] / steps * 1000, 2) for part in ("consumer", "bodies", "rest")
    }
    return {"per_step_ms": per_step, "per_task": per_task, "per_part_ms": parts_ms(spent["parts"])}


def concurrency(
    cfg: Config, found: Cluster, count: int, database: str, floor: bool = True
) -> dict[str, Any]:
    """`count` runs of the `bench` agent sent at once: wall time, rates, RSS, in flight;
    with `floor`, first as many bare runs (`bare`), on the same workers."""
    database_url = found.env["STEPWISE_DATABASE_URL"]
    bare_runs = bare(cfg, found, count, database) if floor else None
    _send_and_wait(found, "bench", min(count, 10), cfg.timeout)  # warm up connections
    clock = CpuClock({"workers": found.worker_pids, "model": [found.others[0].pid]}, database)
    sampler = Sampler(found.worker_pids, found.model_url)
    sampler.start()
    before, where_before = clock.read(), _cpu_snapshots(found)
    with profiling(found.worker_pids if cfg.profile else [], f"{count}-runs"):
        run_ids, began, ended = _send_and_wait(found, "bench", count, cfg.timeout)
    after = clock.read()
    used = clock.used(before, after)
    worker_cpu = cpu_seconds(used["workers"], before, after)
    sampler.done.set()
    sampler.join()
    runs = _runs_table(database_url, run_ids)
    failed = [r for r in runs if r["status"] != "succeeded"]
    wall = ended - began
    steps = sum(int(r["steps"]) for r in runs)
    where = _cpu_where(found, where_before, steps)
    return {
        "runs": count,
        "succeeded": count - len(failed),
        "wall_s": round(wall, 2),
        "ideal_s": round(3 * found.latency + found.streaming, 2),
        "runs_per_s": round(count / wall, 1),
        "steps_per_s": round(steps / wall, 1),
        "run_latency_ms": percentiles([float(r["finished"]) - began for r in runs]),
        "worker_cpu_ms_per_step": round(worker_cpu / steps * 1000, 2),
        "worker_cpu_where": where,
        "peak_worker_rss_mb": round(sampler.peak_rss_mb, 1),
        "peak_model_calls_in_flight": sampler.peak_in_flight,
        "cores_used": used,
        "bare": bare_runs,
    }


def fanout(cfg: Config) -> dict[str, Any]:
    """`bench.follow`, shorter than its defaults, with no workers running: stored events
    committed at `fanout_rate` a second over `fanout_runs` runs, each followed by
    `fanout_followers`, then `model.delta` messages at `fanout_delta_rate` a second."""
    # bench.follow's own command line, so its other settings keep their defaults.
    options = {
        "--runs": cfg.fanout_runs,
        "--followers": cfg.fanout_followers,
        "--rate": cfg.fanout_rate,
        "--seconds": cfg.fanout_seconds,
        "--delta-seconds": cfg.fanout_seconds / 2,
        "--delta-rate": cfg.fanout_delta_rate,
        "--database-url": cfg.database_url,
        "--redis-url": cfg.redis_url,
    }
    follow_cfg, _ = follow.parse([str(part) for pair in options.items() for part in pair])
    found = follow.run_benchmark(follow_cfg)
    return {
        "runs": cfg.fanout_runs,
        "followers": cfg.fanout_followers,
        "stored": found["stored"],
        "correctness": found["correctness"],
        "deltas": found["deltas"],
    }


# The coordinator


def run_benchmark(cfg: Config) -> dict[str, Any]:
    """Every scenario asked for, each on fresh workers against one scratch database."""
    figures: dict[str, Any] = {}
    pools: dict[str, Any] = {
        "redis_url": cfg.redis_url,
        "broker_url": cfg.broker_url or cfg.redis_url,
        "tools": cfg.tools,
        "answer_words": cfg.answer_words,
        "tokens_per_second": cfg.tokens_per_second,
        "pool": cfg.pool,
        "concurrency": cfg.concurrency,
    }
    with scratch_database(cfg.database_url) as url:
        database = make_url(url).database or ""
        with cluster(url, workers=cfg.workers, latency=cfg.latency, **pools) as found:
            if "baseline" in cfg.scenarios:
                figures["baseline"] = baseline(cfg, found, url)
                print(f"baseline: {figures['baseline']}", flush=True)
            if "overhead" in cfg.scenarios:
                figures["overhead"] = overhead(cfg, found)
                print(f"overhead: {figures['overhead']}", flush=True)
            if "concurrency" in cfg.scenarios:
                figures["concurrency"] = []
                for count in cfg.levels:
                    level = concurrency(cfg, found, count, database)
                    figures["concurrency"].append(level)
                    print(f"concurrency {count}: {level}", flush=True)
        if "fanout" in cfg.scenarios:
            figures["fanout"] = fanout(cfg)
            print(f"fanout: {figures['fanout']}", flush=True)
        if "memory" in cfg.scenarios:
            one = {**pools, "pool": cfg.memory_pool, "concurrency": cfg.memory_concurrency}
            with cluster(url, workers=1, latency=cfg.memory_latency, **one) as found:
                runs = cfg.memory_runs
                figures["memory"] = concurrency(cfg, found, runs, database, floor=False)
                print(f"memory: {figures['memory']}", flush=True)
    return figures


# The command line


def parse(argv: list[str]) -> Config:
    """The command line."""
    env = os.environ
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    add("--levels", default="10,100,1000", help="runs started at once, for each point")
    add("--latency", type=float, default=1.0, help="seconds per model call")
    add("--tools", default="1,1", help="the fake model's script: tool calls per round")
    add("--answer-words", type=int, default=0, help="the final answer's words; 0: a short one")
    add("--tokens-per-second", type=float, default=0.0, help="the answer's pace; 0: at once")
    add("--pool", default="threads", choices=("threads", "gevent", "prefork", "eventlet", "solo"))
    add("--concurrency", type=int, default=250, help="-c of each worker")
    add("--workers", type=int, default=4, help="Stepwise worker processes")
    add("--overhead-runs", type=int, default=30)
    add("--hops", type=int, default=200, help="baseline hops: chains of two no-op tasks")
    add("--inserts", type=int, default=500, help="baseline INSERT + COMMITs")
    add("--memory-runs", type=int, default=1000)
    add("--memory-latency", type=float, default=60.0, help="long, so every call is in flight")
    add("--memory-concurrency", type=int, default=1100, help="-c of the memory scenario's worker")
    add("--memory-pool", default="gevent", choices=("gevent", "threads", "eventlet"))
    add("--fanout-runs", type=int, default=100)
    add("--fanout-followers", type=int, default=10, help="followers per run")
    add("--fanout-rate", type=float, default=1000.0, help="stored events/s, all runs together")
    add(
        "--fanout-seconds",
        type=float,
        default=10.0,
        help="of stored events; half as long of deltas",
    )
    add("--fanout-delta-rate", type=float, default=2000.0, help="deltas/s; 0: as fast as they go")
    add("--timeout", type=float, default=600.0, help="seconds to wait for a scenario's runs")
    add("--database-url", default=env.get("STEPWISE_DATABASE_URL") or LOCAL_DATABASE)
    add("--redis-url", default=env.get("STEPWISE_REDIS_URL") or LOCAL_REDIS)
    add("--broker-url", default="", help="Celery's broker (amqp://…); default: the Redis URL")
    add("--output", type=Path, default=RESULTS, help="where the JSON figures go")
    add("--profile", action="store_true", help="py-spy the workers (needs py-spy and ptrace)")
    add(
        "--no-record",
        dest="record",
        action="store_false",
        help="print and write bench/results/run.json only",
    )
    args = vars(parser.parse_args(argv))
    scenarios = tuple(s for s in args.pop("scenarios").split(",") if s)
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    levels = tuple(int(n) for n in args.pop("levels").split(",") if n)
    return Config(scenarios=scenarios, levels=levels, **args)


def main(argv: list[str] | None = None) -> None:
    """Run the scenarios, print the table, write the figures, record them."""
    cfg = parse(sys.argv[1:] if argv is None else argv)
    figures = run_benchmark(cfg)
    figures["machine"] = machine(cfg.database_url, cfg.redis_url)
    figures["config"] = {
        k: v for k, v in asdict(cfg).items() if not k.endswith("_url") and k != "output"
    }
    figures["command"] = shlex.join(["python", "-m", "bench.run", *sys.argv[1:]])
    figures["date"] = time.strftime("%Y-%m-%d %H:%M")
    text = table(figures)
    print(text)
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"wrote {cfg.output}")
    if cfg.record:
        record(figures, text)
        print(f"appended to {DOC}")
        if figures.get("concurrency"):
            plot(figures, PLOT)
            print(f"wrote {PLOT}")


if __name__ == "__main__":
    main()
