"""Benchmark the runtime on real workers: step overhead, concurrency and memory.

Starts a fake model server (`bench.fakemodel`), Celery workers running Stepwise and a
baseline worker (`bench.baseline`), against a scratch Postgres database and Redis
under a key prefix of its own, then runs the scenarios:

- **baseline**: a bare Celery chain of no-op tasks (the hop), and one Postgres
  INSERT + COMMIT: every other figure is also given as a ratio to these.
- **overhead**: runs of `bench_scripted` (an in-process model, a tool that returns at
  once), one at a time. A step's overhead is the time from the previous step's record
  to its own: the hand-off, its transactions and publishing, with no model or tool time.
- **concurrency**: N runs of `bench` (the OpenAI adapter against the fake server, 3
  model calls of `--latency` s and 2 tool calls) sent at once, for each N of `--levels`.
- **memory**: the same with one worker process and `--memory-latency`, so every model
  call is in flight at once; the worker's peak RSS.

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
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from celery import Celery, chain
from sqlalchemy import make_url

from bench.baseline import QUEUE
from bench.common import (
    LOCAL_DATABASE,
    LOCAL_REDIS,
    CpuClock,
    machine,
    percentiles,
    scratch_database,
)
from storage.db import normalise_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "run.json"
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "bench-concurrency.png"
SCENARIOS = ("baseline", "overhead", "concurrency", "memory")
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")


@dataclass(frozen=True)
class Config:
    """What to run."""

    scenarios: tuple[str, ...] = SCENARIOS
    levels: tuple[int, ...] = (10, 100, 1000)
    latency: float = 1.0
    tools: str = "1,1"
    pool: str = "gevent"
    concurrency: int = 1000
    workers: int = 2
    overhead_runs: int = 30
    hops: int = 200
    inserts: int = 500
    memory_runs: int = 1000
    memory_latency: float = 20.0
    timeout: float = 600.0
    database_url: str = LOCAL_DATABASE
    redis_url: str = LOCAL_REDIS
    record: bool = True
    profile: bool = False
    output: Path = RESULTS


@dataclass
class Cluster:
    """The processes of one configuration and how to reach them."""

    env: dict[str, str]
    model_url: str
    latency: float
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]


# Processes


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _fake_model(latency: float, tools: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    argv = [sys.executable, "-m", "bench.fakemodel", "--port", "0", "--latency", str(latency)]
    process = subprocess.Popen(
        [*argv, "--tools", tools], cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("ab")
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("listening on "):
        process.kill()
        raise SystemExit(f"the fake model server did not start: {line!r} (see {log})")
    return process, line.split()[-1]


@contextmanager
def cluster(cfg: Config, database_url: str, workers: int, latency: float) -> Iterator[Cluster]:
    """The fake model server, `workers` Stepwise workers and a baseline worker."""
    logs = ROOT / "bench" / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model, model_url = _fake_model(latency, cfg.tools, logs / "fakemodel.log")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        "CELERY_BROKER_URL": cfg.redis_url,
        "STEPWISE_REDIS_URL": cfg.redis_url,
        "STEPWISE_REDIS_KEY_PREFIX": prefix,
        "STEPWISE_DATABASE_URL": database_url,
        "STEPWISE_AGENTS": "bench.agents",
        "STEPWISE_BENCH_TOOLS": cfg.tools,
        "OPENAI_BASE_URL": f"{model_url}/v1",
        "OPENAI_API_KEY": "bench",
        "PYTHONPATH": str(ROOT),
    }
    common = ["-P", cfg.pool, "-c", str(cfg.concurrency), "--loglevel=WARNING"]
    common += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    found = Cluster(env=env, model_url=model_url, latency=latency, others=[model])
    celery = str(Path(sys.executable).with_name("celery"))
    try:
        for n in range(workers):
            argv = [celery, "-A", "tasks", "worker", *common, "-n", f"bench{n}@%h"]
            argv += ["-Q", "celery,stepwise.model,stepwise.tools"]
            found.workers.append(_spawn(argv, env, logs / f"worker{n}.log"))
        argv = [celery, "-A", "bench.baseline", "worker", *common, "-n", "baseline@%h"]
        found.others.append(_spawn([*argv, "-Q", "bench.baseline"], env, logs / "baseline.log"))
        _wait_for_workers(env, workers + 1)
        yield found
    finally:
        _stop(found.workers + found.others)
        client = redis.Redis.from_url(cfg.redis_url)
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def _client(env: dict[str, str]) -> Celery:
    """A Celery app of this process for one cluster: its broker, its key prefix."""
    app = Celery("bench-client")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = app.conf.result_backend = env["CELERY_BROKER_URL"]
    options = {"global_keyprefix": env["STEPWISE_REDIS_KEY_PREFIX"]}
    app.conf.broker_transport_options = app.conf.result_backend_transport_options = options
    app.conf.task_routes = {"bench.hop": {"queue": QUEUE}}
    return app


def _wait_for_workers(env: dict[str, str], count: int, timeout: float = 60.0) -> None:
    app = _client(env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= count:
            return
    raise SystemExit(f"{count} workers did not answer a ping within {timeout:g} s")


# Scenarios


def baseline(cfg: Config, found: Cluster, database_url: str) -> dict[str, Any]:
    """A bare Celery chain's hop and one INSERT + COMMIT, at their medians; and the CPU
    time a hop costs the baseline worker."""
    app = _client(found.env)

    def hops(count: int) -> Any:
        return chain(app.signature("bench.hop", ([],)), *[app.signature("bench.hop")] * (count - 1))

    hops(10).apply_async().get(timeout=60)  # warm
    clock = CpuClock({"worker": [found.others[1].pid]}, "")
    before = clock.read()
    stamps: list[float] = hops(cfg.hops).apply_async().get(timeout=cfg.timeout)
    cpu_per_hop = cpu_seconds(clock, before, "worker") / cfg.hops
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
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


def cpu_seconds(clock: CpuClock, before: dict[str, Any], role: str) -> float:
    """CPU seconds `role` used since `before`."""
    after = clock.read()
    return float(clock.used(before, after)[role] * (after["at"] - before["at"]))


def _send_runs(env: dict[str, str], agent: str, count: int) -> tuple[list[str], float]:
    """Send `count` runs by name, as another application would; their ids and when."""
    app = _client(env)
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
        ends = [float(run["started"]), *map(float, run["step_ends"]), float(run["finished"])]
        gaps += [b - a for a, b in itertools.pairwise(ends)]
    return {"runs": len(runs), "steps_per_run": runs[0]["steps"], "step_ms": percentiles(gaps)}


def _send_and_wait(
    found: Cluster, agent: str, count: int, timeout: float
) -> tuple[list[str], float, float]:
    run_ids, began = _send_runs(found.env, agent, count)
    ended = _wait_for_runs(found.env["STEPWISE_DATABASE_URL"], run_ids, timeout)
    return run_ids, began, ended


class Sampler(threading.Thread):
    """Peak worker RSS and model calls in flight, sampled every 0.2 s."""

    def __init__(self, pids: list[int], model_url: str) -> None:
        super().__init__(daemon=True)
        self.pids, self.model_url = pids, model_url
        self.peak_rss_mb = 0.0
        self.peak_in_flight = 0
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.model_url, timeout=5.0) as client:
            while not self.done.wait(0.2):
                for pid in self.pids:
                    self.peak_rss_mb = max(self.peak_rss_mb, _rss_mb(pid))
                with suppress(httpx.HTTPError):
                    in_flight = int(client.get("/stats").json()["in_flight"])
                    self.peak_in_flight = max(self.peak_in_flight, in_flight)


def _rss_mb(pid: int) -> float:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def concurrency(cfg: Config, found: Cluster, count: int, database: str) -> dict[str, Any]:
    """`count` runs of the `bench` agent sent at once: wall time, rates, RSS, in flight."""
    database_url = found.env["STEPWISE_DATABASE_URL"]
    _send_and_wait(found, "bench", min(count, 10), cfg.timeout)  # warm up connections
    clock = CpuClock({"workers": found.worker_pids, "model": [found.others[0].pid]}, database)
    sampler = Sampler(found.worker_pids, found.model_url)
    sampler.start()
    before = clock.read()
    with profiling(found.worker_pids if cfg.profile else [], f"{count}-runs"):
        run_ids, began, ended = _send_and_wait(found, "bench", count, cfg.timeout)
    after = clock.read()
    used = clock.used(before, after)
    worker_cpu = used["workers"] * (after["at"] - before["at"])
    sampler.done.set()
    sampler.join()
    runs = _runs_table(database_url, run_ids)
    failed = [r for r in runs if r["status"] != "succeeded"]
    wall = ended - began
    steps = sum(int(r["steps"]) for r in runs)
    return {
        "runs": count,
        "succeeded": count - len(failed),
        "wall_s": round(wall, 2),
        "ideal_s": round(3 * found.latency, 2),
        "runs_per_s": round(count / wall, 1),
        "steps_per_s": round(steps / wall, 1),
        "run_latency_ms": percentiles([float(r["finished"]) - began for r in runs]),
        "worker_cpu_ms_per_step": round(worker_cpu / steps * 1000, 2),
        "peak_worker_rss_mb": round(sampler.peak_rss_mb, 1),
        "peak_model_calls_in_flight": sampler.peak_in_flight,
        "cores_used": used,
    }


@contextmanager
def profiling(pids: list[int], label: str) -> Iterator[None]:
    """py-spy samples each worker meanwhile: collapsed stacks in bench/results/."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    out = ROOT / "bench" / "results"
    spies = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "--output",
                str(out / f"profile-{label}-worker{n}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n, pid in enumerate(pids)
    ]
    try:
        yield
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)
            process.wait(30)


# The coordinator


def run_benchmark(cfg: Config) -> dict[str, Any]:
    """Every scenario asked for, each on fresh workers against one scratch database."""
    figures: dict[str, Any] = {}
    with scratch_database(cfg.database_url) as url:
        database = make_url(url).database or ""
        with cluster(cfg, url, cfg.workers, cfg.latency) as found:
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
        if "memory" in cfg.scenarios:
            with cluster(cfg, url, 1, cfg.memory_latency) as found:
                figures["memory"] = concurrency(cfg, found, cfg.memory_runs, database)
                print(f"memory: {figures['memory']}", flush=True)
    return figures


# Output


def _ratio(value: float, unit: float | None) -> str:
    return f"{value / unit:.2f}x" if unit else "-"


def table(figures: dict[str, Any], cfg: Config) -> str:
    """One Markdown table of every figure, with its ratio to the baseline and its target."""
    rows = ["| figure | value | x baseline (hop + insert) | target |", "| --- | --- | --- | --- |"]
    base = figures.get("baseline")
    unit = base["unit_ms"] if base else None
    hop_cpu = base["hop_cpu_ms"] if base else None
    if base:
        rows.append(
            f"| bare Celery hop, p50 / p99 | {base['hop_ms']['p50']} / "
            f"{base['hop_ms']['p99']} ms | | |"
        )
        rows.append(f"| bare Celery hop: the worker's CPU | {base['hop_cpu_ms']} ms | | |")
        rows.append(
            f"| Postgres INSERT + COMMIT, p50 / p99 | {base['insert_commit_ms']['p50']} / "
            f"{base['insert_commit_ms']['p99']} ms | | |"
        )
    if "overhead" in figures:
        step = figures["overhead"]["step_ms"]
        verdict = "met" if unit and step["p50"] <= 1.5 * unit else "missed"
        rows.append(
            f"| step overhead, p50 | {step['p50']} ms | {_ratio(step['p50'], unit)} "
            f"| ≤ 1.5x ({verdict}) |"
        )
        verdict = "met" if step["p99"] <= 20 else "missed"
        rows.append(
            f"| step overhead, p99 | {step['p99']} ms | {_ratio(step['p99'], unit)} "
            f"| ≤ 20 ms ({verdict}) |"
        )
    for level in figures.get("concurrency", []):
        n = level["runs"]
        target = f"≤ 10 s ({'met' if level['wall_s'] <= 10 else 'missed'})" if n >= 1000 else ""
        rows.append(
            f"| {n} runs at once: wall (ideal {level['ideal_s']} s) | {level['wall_s']} s "
            f"| | {target} |"
        )
        rows.append(
            f"| {n} runs: runs/s, steps/s | {level['runs_per_s']}, {level['steps_per_s']} | | |"
        )
        rows.append(
            f"| {n} runs: the workers' CPU per step | {level['worker_cpu_ms_per_step']} ms "
            f"| {_ratio(level['worker_cpu_ms_per_step'], hop_cpu)} of a hop's CPU | |"
        )
        latency = level["run_latency_ms"]
        rows.append(
            f"| {n} runs: run latency p50 / p99 | {latency['p50'] / 1000:.2f} / "
            f"{latency['p99'] / 1000:.2f} s | | |"
        )
        rows.append(
            f"| {n} runs: peak worker RSS (each of {cfg.workers}) | "
            f"{level['peak_worker_rss_mb']} MB | | |"
        )
    if "memory" in figures:
        memory = figures["memory"]
        in_flight, rss = memory["peak_model_calls_in_flight"], memory["peak_worker_rss_mb"]
        if in_flight < 1000:
            verdict = "not shown: fewer than 1,000 in flight"
        else:
            verdict = "met" if rss < 300 else "missed"
        rows.append(
            f"| one worker, {in_flight} model calls in flight: peak RSS | {rss} MB | "
            f"| < 300 MB with ≥ 1,000 in flight ({verdict}) |"
        )
    return "\n".join(rows)


def plot(figures: dict[str, Any], path: Path) -> None:
    """Throughput and run latency against the number of runs in flight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = figures["concurrency"]
    n = [level["runs"] for level in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, [level["steps_per_s"] for level in levels], "o-", label="steps/s")
    left.plot(n, [level["runs_per_s"] for level in levels], "s-", label="runs/s")
    left.set(xscale="log", xlabel="runs started at once", ylabel="per second", title="Throughput")
    left.legend()
    for key in ("p50", "p90", "p99"):
        right.plot(n, [lv["run_latency_ms"][key] / 1000 for lv in levels], "o-", label=key)
    right.plot(n, [level["ideal_s"] for level in levels], "k--", label="ideal (model time)")
    right.set(xscale="log", xlabel="runs started at once", ylabel="seconds", title="Run latency")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe(info: dict[str, Any]) -> str:
    pg = info["postgres"]
    return (
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['platform']}, Python {info['python']}, "
        f"PostgreSQL {pg['server_version']} (synchronous_commit {pg['synchronous_commit']}, "
        f"fsync {pg['fsync']}), Redis {info['redis']}"
    )


def record(figures: dict[str, Any], text: str, doc: Path = DOC) -> None:
    """Append the table, the machine and the command to docs/benchmarks.md."""
    cfg = figures["config"]
    section = (
        f"\n### {figures['date']}: `{figures['command']}`\n\n"
        f"Machine: {describe(figures['machine'])}.\n"
        f"Workers: {cfg['workers']} x `-P {cfg['pool']} -c {cfg['concurrency']}`; "
        f"model latency {cfg['latency']} s, tool rounds `{cfg['tools']}`.\n\n{text}\n"
    )
    with doc.open("a") as out:
        out.write(section)


def parse(argv: list[str]) -> Config:
    """The command line."""
    env = os.environ
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    add("--levels", default="10,100,1000", help="runs started at once, for each point")
    add("--latency", type=float, default=1.0, help="seconds per model call")
    add("--tools", default="1,1", help="the fake model's script: tool calls per round")
    add("--pool", default="gevent", choices=("gevent", "threads", "prefork", "eventlet", "solo"))
    add("--concurrency", type=int, default=1000, help="-c of each worker")
    add("--workers", type=int, default=2, help="Stepwise worker processes")
    add("--overhead-runs", type=int, default=30)
    add("--hops", type=int, default=200, help="length of the baseline chain")
    add("--inserts", type=int, default=500, help="baseline INSERT + COMMITs")
    add("--memory-runs", type=int, default=1000)
    add("--memory-latency", type=float, default=20.0, help="long, so every call is in flight")
    add("--timeout", type=float, default=600.0, help="seconds to wait for a scenario's runs")
    add("--database-url", default=env.get("STEPWISE_DATABASE_URL") or LOCAL_DATABASE)
    add("--redis-url", default=env.get("STEPWISE_REDIS_URL") or LOCAL_REDIS)
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
    text = table(figures, cfg)
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
