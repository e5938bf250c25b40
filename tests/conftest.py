"""Fixtures: the embedded default, real Postgres + Redis, and real `celery worker` processes.

Integration tests use the machine's Postgres (a fresh database per session) and
Redis (a key prefix per session, so parallel sessions never share queues). When
a service is down they fail under CI=true and are skipped elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ("tests.stores",)  # the `store` fixture, on SQLite and on Postgres
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN = os.environ.get("STEPWISE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STEPWISE_TEST_REDIS", "redis://127.0.0.1:6379/0")
SESSION = uuid.uuid4().hex[:10]
KEY_PREFIX = f"swtest-{SESSION}:"

# The Celery app reads its configuration from the environment the first time it is
# used, so the broker settings go in before anything imports `tasks`. They only
# matter to distributed tests: embedded ones never touch a broker.
os.environ.update(
    {
        "CELERY_BROKER_URL": REDIS_URL,
        "CELERY_RESULT_BACKEND": REDIS_URL,
        "STEPWISE_REDIS_KEY_PREFIX": KEY_PREFIX,
        "STEPWISE_AGENTS": "tests.agents",
    }
)

from tasks.app import app as celery_app  # noqa: E402  (after the settings above)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def services() -> None:
    """Postgres and Redis are up: fail in CI when they are not, skip elsewhere."""
    wanted = (("PostgreSQL", urlsplit(PG_ADMIN)), ("Redis", urlsplit(REDIS_URL)))
    missing = [
        f"{name} at {url.hostname}:{url.port}"
        for name, url in wanted
        if not _reachable(url.hostname or "127.0.0.1", url.port or 0)
    ]
    if missing:
        message = f"{' and '.join(missing)} not reachable (scripts/services starts them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def database_url(services: None) -> Iterator[str]:
    """A fresh Postgres database for this session, migrated to the newest schema."""
    from storage import make_engine, upgrade

    name = f"stepwise_test_{SESSION}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_keys(services: None) -> Iterator[str]:
    """This session's Redis key prefix; every key under it is deleted at the end."""
    yield KEY_PREFIX
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def distributed(
    database_url: str, redis_keys: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The environment of a distributed deployment: Postgres, Redis, a broker."""
    env = {
        "STEPWISE_DATABASE_URL": database_url,
        "STEPWISE_REDIS_URL": REDIS_URL,
        "CELERY_BROKER_URL": REDIS_URL,
        "CELERY_RESULT_BACKEND": REDIS_URL,
        "STEPWISE_REDIS_KEY_PREFIX": KEY_PREFIX,
        "STEPWISE_AGENTS": "tests.agents",
        "STEPWISE_BROKER_POLL_INTERVAL": "0.2",  # workers stop in under a second, not two
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The embedded default: SQLite in a temporary folder, no broker, no Redis."""
    for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STEPWISE_REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    url = f"sqlite:///{tmp_path / 'stepwise.db'}"
    # An eager task run here makes the shared Celery app a result backend for this
    # environment (none) and keeps it, in one of two places (Celery 5.7: shared if the
    # backend is thread-safe, else per thread): both are put back when the test ends.
    monkeypatch.setattr(celery_app, "_backend_cache", None)
    monkeypatch.setattr(celery_app, "_local", threading.local())
    monkeypatch.setenv("STEPWISE_DATABASE_URL", url)
    monkeypatch.setenv("STEPWISE_AGENTS", "tests.agents")
    return {"STEPWISE_DATABASE_URL": url, "STEPWISE_AGENTS": "tests.agents"}


@pytest.fixture(params=["embedded", "distributed"])
def anywhere(request: pytest.FixtureRequest) -> dict[str, str]:
    """Runs a test once on the embedded default and once on Postgres + Redis + a worker."""
    if request.param == "embedded":
        env: dict[str, str] = request.getfixturevalue("embedded")
        return env
    env = request.getfixturevalue("distributed")
    request.getfixturevalue("worker")()
    return env


class Worker:
    """A real `celery worker` process and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.name = name

    def output(self) -> str:
        """Everything the worker has logged so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-whatever, as in a crash."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL if it lingers."""
        stop_all([self])


def stop_all(workers: list[Worker]) -> None:
    """Warm-shut the workers down together (each takes a second or two), killing any that
    linger."""
    running = [w for w in workers if w.process.poll() is None]
    for w in running:
        w.process.send_signal(signal.SIGTERM)
    for w in running:
        try:
            w.process.wait(15)
        except subprocess.TimeoutExpired:
            w.kill()


@pytest.fixture
def worker(distributed: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts real worker processes on the test broker and database; stops them after."""
    started: list[Worker] = []

    def start(
        queues: str = "celery,stepwise.model,stepwise.tools",
        pool: str = "threads",
        concurrency: int = 8,
        extra_env: dict[str, Any] | None = None,
    ) -> Worker:
        name = f"w{len(started)}-{uuid.uuid4().hex[:6]}"
        log = tmp_path / f"{name}.log"
        env = {**os.environ, **distributed, "PYTHONPATH": str(ROOT), **(extra_env or {})}
        command = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "-P", pool, "-c", str(concurrency), "-Q", queues, "-n", f"{name}@%h",
            "--loglevel=INFO", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        w = Worker(process, log, name)
        started.append(w)
        deadline = time.monotonic() + 30
        while "ready." not in w.output():
            if process.poll() is not None or time.monotonic() > deadline:
                w.stop()
                pytest.fail(f"worker {name} did not start:\n{w.output()[-3000:]}")
            time.sleep(0.1)
        return w

    yield start
    stop_all(started)


@pytest.fixture
def beat(
    distributed: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts real `celery beat` processes, each with its own log and schedule file."""
    started: list[subprocess.Popen[bytes]] = []

    def start(scheduler: str | None = None, **extra_env: str) -> subprocess.Popen[bytes]:
        name = f"beat-{len(started)}"
        env = {**os.environ, **distributed, "PYTHONPATH": str(ROOT), **extra_env}
        command = [
            sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel=INFO",
            "-s", str(tmp_path / f"{name}-schedule"), *(["-S", scheduler] if scheduler else []),
        ]  # fmt: skip
        with (tmp_path / f"{name}.log").open("wb") as sink:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=sink)
        started.append(process)
        return process

    yield start
    for process in started:
        stop_beat(process)


def stop_beat(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
