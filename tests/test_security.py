"""Security defaults on real processes: JSON only on the wire, and no API key in what a run writes.

A worker refuses a pickled task message before anything in it is deserialized. A
run on the `openai:` provider, pointed at the local fake server with a canary
key, leaves the key nowhere: not in a command any process sent to Redis, not in a
key left in Redis, not in a row of Postgres, not in the worker's log.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery
from kombu import Producer

from tasks import Agent, app, client, runs
from tasks.runtime import current_runtime
from tests import fake_openai as wire
from tests.agents import add
from tests.fake_openai import FakeOpenAI
from tests.test_integration_support import query, start_worker, wait_until

if TYPE_CHECKING:
    from tests.instances import RedisInstance

# Workers import this module for its agent: it must not import tests.conftest, which
# starts a new session's environment on import.
pytest_plugins = ["tests.instances"]
pytestmark = pytest.mark.services

AGENTS = "tests.agents,tests.test_integration_support,tests.test_security"
REFUSAL = "Refusing to deserialize untrusted content of type pickle"

# A model on the openai provider that asks for a tool, then answers.
keyholder = Agent(
    name="keyholder",
    instructions="Add with the tool.",
    model="openai:fake-model",
    tools=(add,),
    model_settings={"timeout": 30},
)


# --- JSON only ----------------------------------------------------------------------------------


class Tripwire:
    """Unpickling this creates a file: the proof that a process deserialized the message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return (Path.touch, (self.path,))


def _publish(kwargs: dict[str, Any], serializer: str) -> str:
    """Send a `stepwise.start_run` message, its body in `serializer`, to the `celery` queue."""
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, "stepwise.start_run", args=(), kwargs=kwargs)
    with app.connection_for_write() as connection:
        Producer(connection).publish(
            message.body,
            serializer=serializer,
            routing_key="celery",
            headers=message.headers,
            **message.properties,
        )
    return task_id


def _status(database_url: str, run_id: str) -> str | None:
    """The run's status in Postgres; None when it was never recorded."""
    rows = query(database_url, "SELECT status FROM stepwise_runs WHERE id = %s", run_id)
    return str(rows[0][0]) if rows else None


def test_a_pickled_start_message_is_refused_and_runs_nothing(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    running = start_worker(worker, monkeypatch, tmp_path)
    tripped = tmp_path / "unpickled"
    pickled_run, json_run = str(uuid.uuid4()), str(uuid.uuid4())

    pickled_task = _publish(
        {
            "run_id": pickled_run,
            "agent": "parallel",
            "input": "a pickled start",
            "metadata": {"note": Tripwire(tripped)},
        },
        "pickle",
    )
    _publish({"run_id": json_run, "agent": "parallel", "input": "a JSON start"}, "json")

    wait_until("the worker to refuse the pickled message", lambda: REFUSAL in running.output())
    wait_until("the JSON run to succeed", lambda: _status(database_url, json_run) == "succeeded")
    assert not tripped.exists(), "the worker unpickled the message"
    assert REFUSAL + " (application/x-python-serialize)" in running.output()
    assert _status(database_url, pickled_run) is None
    for table in ("stepwise_events", "stepwise_steps"):
        assert query(database_url, f"SELECT 1 FROM {table} WHERE run_id = %s", pickled_run) == []
    # Discarded, not left to come back: no copy in the queue or among unacknowledged messages.
    broker = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    prefix = os.environ["STEPWISE_REDIS_KEY_PREFIX"]
    assert broker.llen(f"{prefix}celery") == 0
    assert pickled_task not in str(broker.hvals(f"{prefix}unacked"))
    broker.close()


# --- no key in anything a run writes ------------------------------------------------------------


class Monitor:
    """Every command a Redis server receives, as MONITOR shows it, from before a run to after."""

    def __init__(self, port: int) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port))
        self._socket.sendall(b"MONITOR\r\n")
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self._reader.start()
        # MONITOR answers +OK once it is on: from then on no command escapes it.
        wait_until("MONITOR to start", lambda: b"+OK" in self._text_bytes())

    def _read(self) -> None:
        while chunk := self._socket.recv(1 << 16):
            with self._lock:
                self._chunks.append(chunk)

    def _text_bytes(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)

    def stop(self, client: redis.Redis) -> str:
        """Everything seen up to now (a marker command sent last is seen last), then stop."""
        marker = f"end-of-capture-{uuid.uuid4().hex}"
        client.echo(marker)
        wait_until("MONITOR to see the end marker", lambda: marker.encode() in self._text_bytes())
        self._socket.shutdown(socket.SHUT_RDWR)
        self._reader.join(10)
        self._socket.close()
        return self._text_bytes().decode(errors="replace")


def _redis_contents(client: redis.Redis) -> str:
    """Every key left in Redis with its value, whatever its type."""
    readers: dict[str, Callable[[Any], Any]] = {
        "string": client.get,
        "list": lambda key: client.lrange(key, 0, -1),
        "hash": client.hgetall,
        "set": client.smembers,
        "zset": lambda key: client.zrange(key, 0, -1, withscores=True),
    }
    lines = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value = readers[kind](key) if kind in readers else kind
        lines.append(f"{key!r} {kind} {value!r}")
    return "\n".join(lines)


def _postgres_rows(database_url: str) -> str:
    """Every row of every stepwise_* table, as text."""
    tables = query(
        database_url,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_name LIKE 'stepwise\\_%%'",
    )
    assert len(tables) >= 5, tables
    return "\n".join(
        f"{table} {row}"
        for (table,) in tables
        for (row,) in query(database_url, f"SELECT t::text FROM {table} AS t")
    )


def _base64_cores(secret: str) -> list[str]:
    """The characters of `secret` in base64 that do not depend on its neighbours, at each of
    the three byte alignments: a message body Kombu base64-encodes still shows one of them."""
    raw = secret.encode()
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        cores.append(encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6])
    return cores


def _masked(key: str) -> str:
    """The key as OpenAI shows it in a 401: its first eight and last four characters."""
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


@dataclass
class Capture:
    """A worker on a private Redis watched from before it starts; the key it holds."""

    key: str
    server: FakeOpenAI
    database_url: str
    sender: Celery
    monitor: Monitor
    redis: redis.Redis
    worker: Any

    def run(self, input: str) -> str:
        """Start a `keyholder` run by task name, as another application would; its id."""
        run_id, _ = runs.accept(current_runtime(), agent="keyholder", input=input)
        self.sender.send_task("stepwise.start_run", kwargs={"run_id": run_id})
        return run_id

    def everything(self) -> dict[str, str]:
        """Stop the worker, then gather all the run wrote: Redis, Postgres, the worker's log."""
        self.worker.stop()  # its last events (worker-offline) go out too
        return {
            "commands sent to Redis": self.monitor.stop(self.redis),
            "keys left in Redis": _redis_contents(self.redis),
            "rows in Postgres": _postgres_rows(self.database_url),
            "the worker's log": self.worker.output(),
        }

    def assert_nowhere(self, written: dict[str, str]) -> None:
        """Neither the key, nor the key without `sk-`, nor its random part, in any form."""
        bare = self.key.removeprefix("sk-")
        needles = {self.key, bare, bare.rsplit("-", 1)[1], *_base64_cores(bare)}
        for where, text in written.items():
            found = sorted(n for n in needles if n in text)
            assert not found, f"the API key is in {where}: {found}"


@pytest.fixture
def capture(
    private_redis: RedisInstance,
    worker: Any,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Capture]:
    """A worker that holds a canary OpenAI key, on a private Redis recorded by MONITOR."""
    key = f"sk-stepwise-canary-{secrets.token_hex(16)}"
    own = {
        "CELERY_BROKER_URL": private_redis.url,
        "CELERY_RESULT_BACKEND": private_redis.url,
        "STEPWISE_REDIS_URL": private_redis.url,
        "STEPWISE_REDIS_KEY_PREFIX": "",  # a Redis of its own: keys as a deployment has them
    }
    for name, value in own.items():  # this process follows the run on the private Redis too
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("tests.test_integration_support.AGENTS", AGENTS)
    client_redis = redis.Redis.from_url(private_redis.url)
    monitor = Monitor(private_redis.port or 0)
    with FakeOpenAI() as server:
        extra = {**own, "OPENAI_API_KEY": key, "OPENAI_BASE_URL": server.url}
        started = start_worker(worker, monkeypatch, tmp_path, extra_env=extra)
        sender = Celery(broker=private_redis.url)
        yield Capture(key, server, database_url, sender, monitor, client_redis, started)
        sender.close()
    client_redis.close()


def test_no_byte_a_run_writes_holds_the_api_key(capture: Capture) -> None:
    capture.server.reply(
        wire.Stream(
            (wire.call_start(0, "call_1", "add"), wire.call_arguments(0, '{"a": 2, "b": 3}')),
            finish_reason="tool_calls",
        ),
        wire.Stream(wire.text_deltas("2 + 3 = ", "5")),
    )

    run_id = capture.run("What is 2 + 3?")
    run = client.wait(run_id, timeout=60)
    written = capture.everything()

    assert run.status == "succeeded", run.error
    assert run.result == "2 + 3 = 5"
    # The worker really held the key, and the capture really saw the run.
    assert [r.headers["authorization"] for r in capture.server.requests] == [
        f"Bearer {capture.key}"
    ] * 2
    assert "stepwise.model_step" in written["commands sent to Redis"]
    assert "stepwise.tool_step" in written["commands sent to Redis"]
    assert "celery-task-meta-" in written["keys left in Redis"]  # the result backend's
    assert run_id in written["rows in Postgres"]
    assert run_id in written["the worker's log"]
    capture.assert_nowhere(written)


def test_a_run_refused_with_401_fails_with_a_readable_reason_and_no_key(
    capture: Capture,
) -> None:
    masked = _masked(capture.key)
    message = (
        f"Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    capture.server.reply(wire.error(401, message, code="invalid_api_key"))

    run_id = capture.run("What is 2 + 3?")
    run = client.wait(run_id, timeout=60)
    written = capture.everything()

    assert run.status == "failed"
    assert run.error == (
        f"model step 1 failed: openai model 'fake-model' rejected the request (HTTP 401): {message}"
    )
    assert masked in written["rows in Postgres"]  # the readable reason is what was stored
    capture.assert_nowhere(written)
