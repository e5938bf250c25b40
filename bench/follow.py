"""Benchmark the follow path: event commit → follower receipt, and `model.delta` fan-out.

Phase 1 commits stored events, one per transaction as the runtime does, at a paced
aggregate rate spread over many runs, while each run has several followers on
`storage.follow.afollow` (asyncio, in separate processes: one Redis connection each).
A publisher notes the wall-clock time its commit returned (the pool's `checkin`, right after),
a follower the time `afollow` handed it the event; latency is the difference. Phase 2
publishes `model.delta` messages as fast as the publishers can (or at `--delta-rate`)
and counts what the followers receive. Every follower must see every stored event of
its run exactly once, in order, ending with the terminal event.

    .venv/bin/python -m bench.follow --runs 100 --followers 10 --rate 1000 --seconds 20

A throwaway database is created on the server of `--database-url` and dropped at the
end. Figures go to stdout and to bench/results/follow.json; docs/benchmarks.md reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import shlex
import sys
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Empty
from typing import Any, TypeVar

import redis
from sqlalchemy import event as sa_event
from sqlalchemy import make_url
from sqlmodel import Session, select

from bench.common import (
    LOCAL_DATABASE,
    LOCAL_REDIS,
    CpuClock,
    machine,
    percentiles,
    scratch_database,
)
from storage import LocalFanout, RedisFanout, Run, Store, Thread, make_engine
from storage.events import MODEL_DELTA, MODEL_STARTED, RUN_QUEUED, RUN_SUCCEEDED, TOOL_COMPLETED
from storage.follow import FollowTimeout, afollow
from storage.keys import run_channel
from storage.models import utcnow
from storage.rows import lock_run

RESULTS = Path(__file__).resolve().parent / "results" / "follow.json"
TOOL_STEP, MODEL_STEP = 1, 2
TOOL_RESULT = {"name": "bench", "result": "r" * 64}  # an event is ~300 bytes of JSON
DELTA = {"kind": "text", "text": "x", "index": 0, "attempt": 1}
WAIT = 120.0  # seconds of slack, beyond the phases, before the coordinator gives up on a child
BUSY = 0.25  # cores used by other programs above which the figures get a warning

T = TypeVar("T")
Commit = tuple[str, int, float, float, float]  # run id, seq, began, committed, published


@dataclass(frozen=True)
class Config:
    """What to run; every process gets a copy."""

    runs: int
    followers: int
    rate: float
    seconds: float
    delta_seconds: float
    delta_rate: float  # 0: as fast as the publishers can
    publisher_processes: int
    publisher_threads: int
    follower_processes: int
    database_url: str
    redis_url: str


@dataclass
class Followed:
    """What one follower saw."""

    run_id: str
    seqs: list[int] = field(default_factory=list)
    received: list[float] = field(default_factory=list)  # time.time() per stored event
    last_type: str | None = None
    deltas: int = 0
    delta_latency: array[float] = field(default_factory=lambda: array("d"))
    last_delta: float = 0.0
    error: str | None = None


class CountingStore(Store):
    """A store that counts its followers' database reads (replays and catch-ups)."""

    reads = 0

    def events_after(self, run_id: str, after: int) -> list[dict[str, Any]]:
        self.reads += 1
        return super().events_after(run_id, after)


class Reconnects(logging.Handler):
    """Counts the times the fan-out's hub lost its Redis connection and made it again."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("event subscriptions lost"):
            self.count += 1


# Followers: asyncio, one RedisFanout (one pub/sub connection) per process.


def follower_process(cfg: Config, share: int, run_ids: list[str], reports: Queue[Any]) -> None:
    """Follow every run with this process's share of its followers; report what they saw."""
    asyncio.run(_follow_all(cfg, share, run_ids, reports))


async def _follow_all(cfg: Config, share: int, run_ids: list[str], reports: Queue[Any]) -> None:
    store = CountingStore(make_engine(cfg.database_url), RedisFanout(cfg.redis_url))
    reconnects = Reconnects()
    logging.getLogger("storage.fanout").addHandler(reconnects)
    mine = [
        Followed(run_id)
        for run_id in run_ids
        for index in range(cfg.followers)
        if index % cfg.follower_processes == share
    ]
    waiting = [len(mine)]
    started = asyncio.Event()

    def on_first() -> None:  # every follower has replayed seq 1, so it listens live
        waiting[0] -= 1
        if not waiting[0]:
            started.set()

    timeout = cfg.seconds + cfg.delta_seconds + WAIT
    everyone = asyncio.gather(*(_follow_one(store, f, on_first, timeout) for f in mine))
    first: list[asyncio.Future[Any]] = [asyncio.ensure_future(started.wait()), everyone]
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)  # or a follower failed
    reports.put(("ready", share, os.getpid()))
    await everyone
    reports.put(("followed", share, mine, store.reads, reconnects.count))


async def _follow_one(
    store: Store, seen: Followed, on_first: Callable[[], None], timeout: float
) -> None:
    try:
        async for event in afollow(store, seen.run_id, timeout=timeout):
            now = time.time()
            if event["seq"] is None:
                seen.deltas += 1
                seen.last_delta = now
                seen.delta_latency.append(now - datetime.fromisoformat(event["at"]).timestamp())
                continue
            seen.seqs.append(event["seq"])
            seen.received.append(now)
            seen.last_type = event["type"]
            if len(seen.seqs) == 1:
                on_first()
    except FollowTimeout as error:
        seen.error = str(error)
        if not seen.seqs:
            on_first()


# Publishers: threads in a few processes, each thread owning some runs.


def publisher_process(
    cfg: Config, share: int, groups: list[list[str]], commands: Queue[Any], reports: Queue[Any]
) -> None:
    """Commit paced events, then publish deltas, then end the runs, on the coordinator's word."""
    store = Store(make_engine(cfg.database_url), RedisFanout(cfg.redis_url))
    stamps = threading.local()  # the time this thread's latest commit returned
    # A transaction's connection goes back to the pool as soon as it has committed.
    sa_event.listen(store.engine, "checkin", lambda *_: setattr(stamps, "at", time.time()))
    for connection in [store.engine.connect() for _ in groups]:  # fill the pool up front
        connection.close()
    reports.put(("ready", share, os.getpid()))

    _, t0 = commands.get()
    rate = cfg.rate / cfg.runs
    done = _in_threads(groups, lambda runs: _commit_events(store, stamps, runs, rate, t0, cfg))
    reports.put(("stored", share, [c for commits in done for c in commits]))

    _, t1 = commands.get()
    rate = cfg.delta_rate / cfg.runs
    sent = _in_threads(groups, lambda runs: _publish_deltas(store, runs, rate, t1, cfg))
    reports.put(("deltas", share, sum((s for s, _ in sent), Counter()), max(e for _, e in sent)))
    commands.get()  # the coordinator has read the CPU time of our database sessions


def _in_threads(groups: list[list[str]], work: Callable[[list[str]], T]) -> list[T]:
    with ThreadPoolExecutor(len(groups)) as pool:
        return list(pool.map(work, groups))


def _paced(rate: float, start: float, end: float) -> Iterator[int]:
    """0, 1, 2… each at `start + n / rate` (at once when late) until `end`; rate 0: no pauses."""
    n = 0
    while (now := time.time()) < end:
        due = start + n / rate if rate else start
        if due >= end:
            return
        if due > now:
            time.sleep(due - now)
        yield n
        n += 1


def _commit_events(
    store: Store, stamps: threading.local, runs: list[str], per_run: float, t0: float, cfg: Config
) -> list[Commit]:
    """Phase 1 for one thread's runs: paced events, then each run's `model.started`."""
    commits = []
    for n in _paced(per_run * len(runs), t0, t0 + cfg.seconds):
        run_id = runs[n % len(runs)]
        began = time.time()
        with store.transaction() as tx:
            lock_run(tx.db, run_id)  # as every step does: its events are numbered on the row
            event = tx.emit(run_id, TOOL_COMPLETED, {"call_id": f"c{n}", **TOOL_RESULT}, TOOL_STEP)
        commits.append((run_id, event.seq, began, stamps.at, time.time()))
    for run_id in runs:
        with store.transaction() as tx:
            lock_run(tx.db, run_id)
            tx.emit(run_id, MODEL_STARTED, {"model": "bench", "attempt": 1}, step=MODEL_STEP)
    return commits


def _publish_deltas(
    store: Store, runs: list[str], per_run: float, t1: float, cfg: Config
) -> tuple[Counter[str], float]:
    """Phase 2 for one thread's runs: deltas round-robin, then each run's terminal event."""
    sent: Counter[str] = Counter()
    for n in _paced(per_run * len(runs), t1, t1 + cfg.delta_seconds):
        run_id = runs[n % len(runs)]
        store.publish_live(run_id, MODEL_DELTA, DELTA, step=MODEL_STEP)
        sent[run_id] += 1
    ended = time.time()
    for run_id in runs:
        with store.transaction() as tx:
            run = lock_run(tx.db, run_id)
            assert run is not None
            tx.write(run, status="succeeded", finished_at=utcnow())
            tx.emit(run_id, RUN_SUCCEEDED, {"status": "succeeded", "usage": {}, "cost_usd": None})
    return sent, ended


# Setup and measurement


def create_runs(url: str, count: int) -> list[str]:
    """`count` runs, each with its thread and a `run.queued` event (seq 1)."""
    engine = make_engine(url)
    run_ids = [str(uuid.uuid4()) for _ in range(count)]
    with Store(engine, LocalFanout()).transaction() as tx:
        for run_id in run_ids:
            tx.db.orm.add(Thread(id=run_id))
            tx.db.orm.flush()
            tx.db.orm.add(Run(id=run_id, agent="bench", input="bench", thread_id=run_id))
            tx.db.orm.flush()
            tx.emit(run_id, RUN_QUEUED, {"agent": "bench", "thread": run_id})
    engine.dispose()
    return run_ids


def last_seqs(url: str) -> dict[str, int]:
    """Each run's last sequence number, from the database."""
    engine = make_engine(url)
    with Session(engine) as db:
        rows = db.exec(select(Run.id, Run.last_seq)).all()
    engine.dispose()
    return dict(rows)


def pubsub_clients(client: redis.Redis) -> set[str]:
    """Ids of the Redis connections subscribed to at least one channel."""
    return {c["id"] for c in client.client_list() if int(c.get("sub", 0)) > 0}


# The coordinator


def run_benchmark(cfg: Config) -> dict[str, Any]:
    """Both phases against a scratch database; the figures."""
    with scratch_database(cfg.database_url) as url:
        cfg = Config(**{**asdict(cfg), "database_url": url})
        run_ids = create_runs(url, cfg.runs)
        client = redis.Redis.from_url(cfg.redis_url)
        children: list[BaseProcess] = []
        try:
            return _coordinate(cfg, run_ids, client, children)
        finally:
            for child in children:
                child.join(timeout=10)
                if child.is_alive():
                    child.terminate()
            client.close()


def _coordinate(
    cfg: Config, run_ids: list[str], client: redis.Redis, children: list[BaseProcess]
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    followers, publishers = ctx.Queue(), ctx.Queue()
    for share in range(cfg.follower_processes):
        follow = (cfg, share, run_ids, followers)
        children.append(ctx.Process(target=follower_process, args=follow))
    threads = cfg.publisher_processes * cfg.publisher_threads
    groups = [run_ids[k::threads] for k in range(threads)]
    commands = [ctx.Queue() for _ in range(cfg.publisher_processes)]
    for share, queue in enumerate(commands):
        mine = [g for g in groups[share :: cfg.publisher_processes] if g]
        publish = (cfg, share, mine, queue, publishers)
        children.append(ctx.Process(target=publisher_process, args=publish))
    subscribed_before = pubsub_clients(client)
    for child in children:
        child.start()

    peak = [0]  # the largest output buffer Redis held for a follower process, in bytes

    def watch() -> None:  # past 32 MB (by default) Redis drops the connection
        for c in client.client_list():
            if int(c.get("sub", 0)) > 0 and c["id"] not in subscribed_before:
                peak[0] = max(peak[0], int(c["omem"]))

    def expect(reports: Queue[Any], kind: str, count: int) -> list[tuple[Any, ...]]:
        got: list[tuple[Any, ...]] = []
        deadline = time.time() + WAIT + cfg.seconds + cfg.delta_seconds
        while len(got) < count:
            if time.time() > deadline or any(c.exitcode for c in children):
                raise RuntimeError(f"gave up waiting for {kind!r}: a child failed or hangs")
            watch()
            with suppress(Empty):
                got.append(reports.get(timeout=1))
        assert all(r[0] == kind for r in got), got
        return got

    def tell(command: str, value: float | None) -> None:
        for queue in commands:
            queue.put((command, value))

    follower_pids = [r[2] for r in expect(followers, "ready", cfg.follower_processes)]
    subscribers = len(pubsub_clients(client) - subscribed_before)
    per_channel = max(n for _, n in client.pubsub_numsub(*map(run_channel, run_ids)))
    publisher_pids = [r[2] for r in expect(publishers, "ready", cfg.publisher_processes)]
    roles = {"publishers": publisher_pids, "followers": follower_pids}
    clock = CpuClock(roles, make_url(cfg.database_url).database or "")

    readings = [clock.read()]
    t0 = time.time() + 0.2
    tell("go", t0)
    stored = expect(publishers, "stored", cfg.publisher_processes)
    readings.append(clock.read())
    t1 = time.time() + 0.2
    tell("go", t1)
    deltas = expect(publishers, "deltas", cfg.publisher_processes)
    readings.append(clock.read())
    tell("quit", None)
    followed = expect(followers, "followed", cfg.follower_processes)
    readings.append(clock.read())

    figures = _figures(cfg, t0, t1, stored, deltas, followed, last_seqs(cfg.database_url))
    figures["redis"] = {
        "pubsub_connections": subscribers,
        "per_run_channel": per_channel,
        "reconnects": sum(report[4] for report in followed),
        "peak_output_buffer_mb": round(peak[0] / 2**20, 1),
    }
    phases = ("stored events", "deltas published", "after publishing: followers catch up")
    figures["cores_used"] = {
        phase: clock.used(a, b)
        for phase, a, b in zip(phases, readings[:-1], readings[1:], strict=True)
    }
    return figures


def _figures(
    cfg: Config,
    t0: float,
    t1: float,
    stored: list[tuple[Any, ...]],
    deltas: list[tuple[Any, ...]],
    followed: list[tuple[Any, ...]],
    last_seq: dict[str, int],
) -> dict[str, Any]:
    commits = {(c[0], c[1]): c[2:] for report in stored for c in report[2]}
    everyone: list[Followed] = [f for report in followed for f in report[2]]
    latency = [
        at - commits[(f.run_id, seq)][1]
        for f in everyone
        for seq, at in zip(f.seqs, f.received, strict=True)
        if (f.run_id, seq) in commits
    ]
    wrong = [
        f
        for f in everyone
        if f.seqs != list(range(1, last_seq[f.run_id] + 1)) or f.last_type != RUN_SUCCEEDED
    ]
    sent: Counter[str] = sum((report[2] for report in deltas), Counter())
    published, delivered = sum(sent.values()), sum(f.deltas for f in everyone)
    expected = sum(sent[f.run_id] for f in everyone)
    drained = max(f.last_delta for f in everyone)
    return {
        "stored": {
            "target_per_s": cfg.rate,
            "events": len(commits),
            "per_s": round(len(commits) / (max(c[1] for c in commits.values()) - t0), 1),
            "commit_to_receipt_ms": percentiles(latency),
            "transaction_ms": percentiles([c[1] - c[0] for c in commits.values()]),
            "commit_to_published_ms": percentiles([c[2] - c[1] for c in commits.values()]),
        },
        "correctness": {
            "followers": len(everyone),
            "not_exactly_once_in_order": len(wrong),
            "errors": sum(1 for f in everyone if f.error),
            "database_reads": sum(report[3] for report in followed),
        },
        "deltas": {
            "published": published,
            "published_per_s": round(published / (max(r[3] for r in deltas) - t1), 1),
            "delivered": delivered,
            "delivered_per_s": round(delivered / (drained - t1), 1) if delivered else 0.0,
            "delivered_share": round(delivered / expected, 4) if expected else None,
            "publish_to_receipt_ms": percentiles([x for f in everyone for x in f.delta_latency]),
        },
    }


# Output


def report(figures: dict[str, Any]) -> None:
    """The figures, for a person."""
    s, c, d, r = figures["stored"], figures["correctness"], figures["deltas"], figures["redis"]

    def spread(ms: dict[str, float]) -> str:
        return ", ".join(f"{k} {ms[k]} ms" for k in ("p50", "p90", "p99", "max") if k in ms)

    print(f"stored events: {s['events']} committed, {s['per_s']}/s (target {s['target_per_s']}/s)")
    print(f"  commit → follower receipt: {spread(s['commit_to_receipt_ms'])}")
    print(f"  (n = {s['commit_to_receipt_ms']['n']} receipts)")
    print(f"  transaction (begin → commit returned): {spread(s['transaction_ms'])}")
    print(f"  commit returned → publish returned: {spread(s['commit_to_published_ms'])}")
    print(
        f"followers: {c['followers']}; not exactly once and in order: "
        f"{c['not_exactly_once_in_order']}; errors: {c['errors']}; "
        f"database reads: {c['database_reads']}"
    )
    print(
        f"deltas: {d['published']} published, {d['published_per_s']}/s; "
        f"{d['delivered']} delivered, {d['delivered_per_s']}/s "
        f"({d['delivered_share']:.2%} of published times followers)"
    )
    print(f"  publish → follower receipt: {spread(d['publish_to_receipt_ms'])}")
    print(
        f"redis pub/sub connections: {r['pubsub_connections']} for {c['followers']} followers "
        f"({r['per_run_channel']} subscribed to each run's channel); dropped and made again: "
        f"{r['reconnects']}; largest output buffer: {r['peak_output_buffer_mb']} MB"
    )
    for phase, cores in figures["cores_used"].items():
        print(f"cores used, {phase}: " + ", ".join(f"{k} {v}" for k, v in cores.items()))
        if cores.get("other", 0) > BUSY:
            print(f"  warning: other programs used {cores['other']} cores; the figures suffer")
    print(f"cpus: {figures['machine']['cpus']}")


def parse(argv: list[str]) -> tuple[Config, Path]:
    """The command line."""
    env = os.environ
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--runs", type=int, default=100)
    add("--followers", type=int, default=10, help="followers per run")
    add("--rate", type=float, default=1000.0, help="stored events per second, all runs together")
    add("--seconds", type=float, default=20.0, help="how long to commit stored events")
    add("--delta-seconds", type=float, default=10.0, help="how long to publish deltas")
    add("--delta-rate", type=float, default=0.0, help="deltas per second; 0: as fast as possible")
    add("--publisher-processes", type=int, default=2)
    add("--publisher-threads", type=int, default=4, help="per publisher process")
    add("--follower-processes", type=int, default=2)
    add("--database-url", default=env.get("STEPWISE_DATABASE_URL") or LOCAL_DATABASE)
    add("--redis-url", default=env.get("STEPWISE_REDIS_URL") or LOCAL_REDIS)
    add("--output", type=Path, default=RESULTS, help="where the JSON figures go")
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    return Config(**args), output


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the figures and write them as JSON."""
    cfg, output = parse(sys.argv[1:] if argv is None else argv)
    figures = run_benchmark(cfg)
    figures["machine"] = machine(cfg.database_url, cfg.redis_url)
    figures["config"] = {k: v for k, v in asdict(cfg).items() if not k.endswith("_url")}
    figures["command"] = shlex.join(sys.orig_argv)
    figures["date"] = time.strftime("%Y-%m-%d %H:%M")
    report(figures)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
