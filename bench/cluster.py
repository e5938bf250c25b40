"""The processes a benchmark runs against: a fake model server, Stepwise workers and a
baseline worker; and what samples them while they work (RSS, calls in flight, py-spy)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from bench.baseline import QUEUE
from bench.fakemodel import Behaviour

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass
class Cluster:
    """The processes of one configuration and how to reach them."""

    env: dict[str, str]
    model_url: str
    latency: float
    streaming: float = 0.0  # seconds the final answer takes to stream, after the latency
    pool: str = "threads"  # the Stepwise workers' -P
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    @property
    def threaded(self) -> bool:
        """Whether a task body has an OS thread to itself while it runs (`bench.taskcpu`):
        not a greenlet's, which others share, nor a prefork child's, which the parent
        answering for the worker does not see."""
        return self.pool in ("threads", "solo")


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


def answer(words: int) -> str:
    """A final answer of `words` words (0: the fake server's own short answer)."""
    return " ".join(f"word{n}" for n in range(words))


def _fake_model(
    latency: float, tools: str, words: int, pace: float, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    argv = [sys.executable, "-m", "bench.fakemodel", "--port", "0", "--latency", str(latency)]
    argv += ["--tools", tools, "--tokens-per-second", str(pace)]
    if words:
        argv += ["--answer", answer(words)]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("ab"))
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("listening on "):
        process.kill()
        raise SystemExit(f"the fake model server did not start: {line!r} (see {log})")
    return process, line.split()[-1]


@contextmanager
def cluster(
    database_url: str,
    *,
    redis_url: str,
    broker_url: str,
    workers: int,
    latency: float,
    tools: str,
    pool: str,
    concurrency: int,
    answer_words: int = 0,
    tokens_per_second: float = 0.0,
) -> Iterator[Cluster]:
    """The fake model server, `workers` Stepwise workers (`-P pool -c concurrency`) and a
    baseline worker, with Redis keys under a prefix of their own, deleted at the end."""
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pace = tokens_per_second
    model, model_url = _fake_model(latency, tools, answer_words, pace, logs / "fakemodel.log")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "STEPWISE_REDIS_URL": redis_url,
        "STEPWISE_REDIS_KEY_PREFIX": prefix,
        "STEPWISE_DATABASE_URL": database_url,
        "STEPWISE_AGENTS": "bench.agents",
        "STEPWISE_BENCH_TOOLS": tools,
        "OPENAI_BASE_URL": f"{model_url}/v1",
        "OPENAI_API_KEY": "bench",
        "PYTHONPATH": str(ROOT),
    }
    common = ["-P", pool, "-c", str(concurrency), "--loglevel=WARNING"]
    common += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    words = answer_words or len(Behaviour.answer.split())
    streaming = words / pace if pace else 0.0
    found = Cluster(env, model_url, latency, streaming, pool, others=[model])
    celery = str(Path(sys.executable).with_name("celery"))
    try:
        for n in range(workers):
            argv = [celery, "-A", "tasks", "worker", *common, "-n", f"bench{n}@%h"]
            argv += ["-Q", "celery,stepwise.model,stepwise.tools", "-I", "bench.bare,bench.taskcpu"]
            found.workers.append(_spawn(argv, env, logs / f"worker{n}.log"))
        argv = [celery, "-A", "bench.baseline", "worker", *common, "-n", "baseline@%h"]
        found.others.append(_spawn([*argv, "-Q", "bench.baseline"], env, logs / "baseline.log"))
        _wait_for_workers(env, workers + 1)
        yield found
    finally:
        _stop(found.workers + found.others)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def client_app(env: dict[str, str]) -> Celery:
    """A Celery app of this process for one cluster: its broker, its key prefix."""
    app = Celery("bench-client")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = env["CELERY_BROKER_URL"]
    app.conf.result_backend = env["CELERY_RESULT_BACKEND"]
    options = {"global_keyprefix": env["STEPWISE_REDIS_KEY_PREFIX"]}
    app.conf.broker_transport_options = app.conf.result_backend_transport_options = options
    app.conf.task_routes = {"bench.hop": {"queue": QUEUE}}
    return app


def _wait_for_workers(env: dict[str, str], count: int, timeout: float = 60.0) -> None:
    app = client_app(env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= count:
            return
    raise SystemExit(f"{count} workers did not answer a ping within {timeout:g} s")


def task_cpu(env: dict[str, str], workers: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every Stepwise worker's `bench.taskcpu` snapshot (the `bench_taskcpu` command)."""
    app = client_app(env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The baseline worker answers too, with an error: it has no such command.
        asked = {"reply": True, "timeout": 1.0, "limit": workers + 1}
        replies = app.control.broadcast("bench_taskcpu", **asked) or []
        found = [r for reply in replies for r in reply.values() if "pid" in r]
        if len(found) >= workers:
            return found
    raise SystemExit(f"{workers} workers did not report their CPU within {timeout:g} s")


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


@contextmanager
def profiling(pids: list[int], label: str) -> Iterator[None]:
    """py-spy samples each worker meanwhile: collapsed stacks in bench/results/."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    out = RESULTS
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
                "--gil",  # only the thread holding the GIL: where the CPU goes
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
