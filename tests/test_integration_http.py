"""`stepwise serve` over real HTTP: a server process, a celery worker, Postgres and Redis.

Each test talks to the server the way a client on another machine would: httpx for
requests and event streams (read by the small Server-Sent Events parser below), and
a raw socket for a client that asks for a stream and then never reads it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from storage import TERMINAL
from storage.keys import run_channel
from tests.conftest import KEY_PREFIX, REDIS_URL, ROOT, Worker
from tests.test_integration_support import (
    AGENTS,
    ANSWER_WORDS,
    GATES_ENV,
    Server,
    events,
    free_port,
    open_gate,
    query,
    run_row,
    wait_for_event,
    wait_until,
)

pytestmark = pytest.mark.services

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef"
PATIENCE = 30.0  # seconds any one wait may take before the test fails


# The wire format, as a browser's EventSource reads it (HTML, "Server-sent events").


@dataclass
class Message:
    """One dispatched event: its type (`message` unless named), data, and its own `id:`."""

    event: str
    data: str
    id: str | None

    @property
    def payload(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSE:
    """A parser fed one line at a time; keeps the messages and the comment lines."""

    messages: list[Message] = field(default_factory=list)
    comments: list[tuple[int, str]] = field(default_factory=list)  # (messages before, text)
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> None:
        if not line:
            if self._data:
                self.messages.append(
                    Message(self._event or "message", "\n".join(self._data), self._id)
                )
            self._event, self._data, self._id = "", [], None
            return
        if line.startswith(":"):
            self.comments.append((len(self.messages), line[1:].strip()))
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value

    def feed_text(self, text: str) -> SSE:
        for line in text.replace("\r\n", "\n").split("\n"):
            self.feed(line)
        return self

    @property
    def stored(self) -> list[tuple[int, str]]:
        """(seq, type) of each stored event received; token deltas have no seq."""
        return [
            (m.payload["seq"], m.payload["type"])
            for m in self.messages
            if m.event == "message" and m.payload["seq"] is not None
        ]

    @property
    def ended(self) -> bool:
        return bool(self.messages) and self.messages[-1].event == "end"


class Follower:
    """One client of `GET /runs/{id}/events`, read a line at a time."""

    def __init__(
        self, client: httpx.Client, path: str, headers: dict[str, str] | None = None
    ) -> None:
        self._stream = client.stream("GET", path, headers=headers)
        self.response = self._stream.__enter__()
        self._lines = self.response.iter_lines()
        self.sse = SSE()

    def read_until(self, what: str, done: Callable[[SSE], bool]) -> SSE:
        """Read until `done(sse)`; fail with `what` if the stream ends or stalls first."""
        deadline = time.monotonic() + PATIENCE
        while not done(self.sse):
            if time.monotonic() > deadline:
                pytest.fail(f"gave up reading the stream: {what}")
            line = next(self._lines, None)
            if line is None:
                pytest.fail(f"the stream closed before {what}: {self.sse.messages[-3:]}")
            self.sse.feed(line)
        return self.sse

    def read_to_close(self) -> SSE:
        """Read until the server closes the stream."""
        deadline = time.monotonic() + PATIENCE
        for line in self._lines:
            self.sse.feed(line)
            if time.monotonic() > deadline:
                pytest.fail("the stream did not close")
        self.close()
        return self.sse

    def close(self) -> None:
        self._stream.__exit__(None, None, None)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Stalled:
    """A client that asks for a run's event stream and then never reads a byte."""

    def __init__(self, port: int, run_id: str, token: str) -> None:
        self.port = port
        self.sock = socket.socket()
        self.sock.connect(("127.0.0.1", port))
        request = (
            f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\n\r\n"
        )
        self.sock.sendall(request.encode())

    def received(self, text: str) -> bool:
        """Whether `text` is among the bytes waiting unread (peeked at, not read)."""
        self.sock.settimeout(0.2)
        try:
            waiting = self.sock.recv(1 << 20, socket.MSG_PEEK)
        except TimeoutError:
            return False
        return text.encode() in waiting

    def server_side(self) -> tuple[str, int] | None:
        """The state and unsent bytes of the server's end of this connection (/proc/net/tcp)."""
        me = self.sock.getsockname()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) == self.port and int(remote.split(":")[1], 16) == me:
                return TCP_STATES.get(state, state), int(fields[4].split(":")[0], 16)
        return None

    def read_all(self) -> SSE:
        """Read at last, to the end of the connection; the event stream it carried."""
        self.sock.settimeout(PATIENCE)
        raw = bytearray()
        try:
            while chunk := self.sock.recv(1 << 20):
                raw += chunk
        except ConnectionResetError:
            pass  # the server aborted the connection: what came before it is all there is
        except TimeoutError:
            pytest.fail(f"the server never closed the connection; it sent {len(raw)} bytes")
        finally:
            self.sock.close()
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return SSE().feed_text(dechunk(body).decode())

    def close(self) -> None:
        self.sock.close()


TCP_STATES = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "07": "CLOSE",
              "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING", "06": "TIME_WAIT"}  # fmt: skip


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, as far as it got."""
    out, at = bytearray(), 0
    while (end := body.find(b"\r\n", at)) != -1 and (size := int(body[at:end], 16)):
        out += body[end + 2 : end + 2 + size]
        at = end + 2 + size + 2
    return bytes(out)


# The deployment: one worker and one server for the module; tests add servers.


@dataclass
class Deployment:
    env: dict[str, str]
    folder: Path
    gates: Path
    database_url: str
    server: Server

    def serve(self, *options: str) -> Server:
        """Another server on the same database and broker, with its own options."""
        name = f"server-{uuid.uuid4().hex[:6]}"
        return Server(self.env, ROOT, self.folder / f"{name}.log", free_port(), *options).start()

    def log(self, run_id: str) -> list[tuple[int, str]]:
        """The run's stored events, (seq, type), straight from Postgres."""
        return [(seq, kind) for seq, kind, _ in events(self.database_url, run_id)]

    def finished(self, run_id: str) -> str:
        """Wait until the run has ended; its status."""

        def ended() -> str | None:
            status: str = run_row(self.database_url, run_id)["status"]
            return status if status in TERMINAL else None

        status: str = wait_until(f"run {run_id} to end", ended, within=PATIENCE)
        return status


@pytest.fixture(scope="module")
def deployment(
    database_url: str, redis_keys: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("http")
    gates = folder / "gates"
    gates.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STEPWISE_DATABASE_URL": database_url,
        "STEPWISE_REDIS_URL": REDIS_URL,
        "CELERY_BROKER_URL": REDIS_URL,
        "CELERY_RESULT_BACKEND": REDIS_URL,
        "STEPWISE_REDIS_KEY_PREFIX": KEY_PREFIX,
        "STEPWISE_AGENTS": AGENTS,
        GATES_ENV: str(gates),
        "STEPWISE_API_TOKENS": f"alice={ALICE},bob={BOB}",
    }
    worker = start_worker(env, folder / "worker.log")
    # A client that stops reading is only cut off from `impatient`, not from this server.
    options = ("--keepalive", "0.5", "--send-timeout", "120")
    server = Server(env, ROOT, folder / "server.log", free_port(), *options)
    try:
        yield Deployment(env, folder, gates, database_url, server.start())
    finally:
        server.stop()
        worker.stop()


def start_worker(env: dict[str, str], log: Path) -> Worker:
    """A celery worker for the whole module (the `worker` fixture starts one per test)."""
    command = [
        sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "threads", "-c", "8",
        "-Q", "celery,stepwise.model,stepwise.tools", "-n", f"http-{uuid.uuid4().hex[:6]}@%h",
        "--loglevel=INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    w = Worker(process, log, "http")
    try:
        wait_until(
            "the worker to be ready",
            lambda: "ready." in w.output() or process.poll() is not None,
            within=PATIENCE,
        )
        assert process.poll() is None, w.output()[-3000:]
    except BaseException:
        w.stop()
        raise
    return w


@pytest.fixture(scope="module")
def impatient(deployment: Deployment) -> Iterator[Server]:
    """A second server, which cuts off a client after one second of not reading."""
    server = deployment.serve("--keepalive", "0.5", "--send-timeout", "1")
    yield server
    server.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def alice(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.server.url, headers=bearer(ALICE), timeout=PATIENCE) as c:
        yield c


@pytest.fixture
def anonymous(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.server.url, timeout=PATIENCE) as c:
        yield c


def start(client: httpx.Client, agent: str, **extra: Any) -> str:
    response = client.post("/runs", json={"agent": agent, "input": "go", **extra})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def held_at_gate(deployment: Deployment, run_id: str) -> int:
    """Wait until the run waits at its gate (step 2); the seq of that tool.started."""
    return wait_for_event(deployment.database_url, run_id, "tool.started", step=2)


def seen(seq: int) -> Callable[[SSE], bool]:
    return lambda sse: any(s == seq for s, _ in sse.stored)


# Starting, reading and refusing.


def test_starting_a_run_answers_201_with_its_location_and_the_same_idempotency_key_answers_200(
    alice: httpx.Client, deployment: Deployment
) -> None:
    body = {"agent": "parallel", "input": "add", "idempotency_key": f"key-{uuid.uuid4()}"}

    first = alice.post("/runs", json=body)
    again = alice.post("/runs", json=body)

    assert first.status_code == 201, first.text
    run_id = first.json()["id"]
    assert first.headers["Location"] == f"/runs/{run_id}"
    assert first.json()["owner"] == "alice"
    assert again.status_code == 200, again.text
    assert again.json()["id"] == run_id
    assert again.headers["Location"] == f"/runs/{run_id}"
    assert deployment.finished(run_id) == "succeeded"
    stored = query(
        deployment.database_url,
        "SELECT id FROM stepwise_runs WHERE idempotency_key = %s",
        body["idempotency_key"],
    )
    assert stored == [(run_id,)]
    shown = alice.get(f"/runs/{run_id}").json()
    assert (shown["status"], shown["result"]) == ("succeeded", "1+2 and 3+4 are done")
    assert [s["kind"] for s in shown["steps"]] == ["model", "tool", "tool", "model"]


def test_another_owners_run_is_forbidden_to_read_cancel_follow_and_ticket(
    alice: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "parallel")
    with httpx.Client(base_url=deployment.server.url, headers=bearer(BOB), timeout=PATIENCE) as bob:
        answers = [
            bob.get(f"/runs/{run_id}"),
            bob.post(f"/runs/{run_id}/cancel"),
            bob.get(f"/runs/{run_id}/events"),
            bob.post(f"/runs/{run_id}/tickets"),
        ]

    assert [a.status_code for a in answers] == [403, 403, 403, 403]
    assert deployment.finished(run_id) == "succeeded"  # bob's cancel changed nothing
    assert "run.cancel_requested" not in [kind for _, kind in deployment.log(run_id)]


def test_an_unknown_run_is_not_found_everywhere(alice: httpx.Client) -> None:
    missing = str(uuid.uuid4())

    answers = [
        alice.get(f"/runs/{missing}"),
        alice.post(f"/runs/{missing}/cancel"),
        alice.get(f"/runs/{missing}/events"),
        alice.post(f"/runs/{missing}/tickets"),
    ]

    assert [a.status_code for a in answers] == [404, 404, 404, 404]


@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {ALICE}x", f"Basic {ALICE}", "Bearer", ALICE],
    ids=["none", "unknown-token", "wrong-scheme", "empty-token", "no-scheme"],
)
def test_a_request_without_a_valid_bearer_token_is_refused_with_401_and_www_authenticate(
    anonymous: httpx.Client, alice: httpx.Client, authorization: str | None
) -> None:
    run_id = start(alice, "parallel")
    headers = {} if authorization is None else {"Authorization": authorization}

    answers = [
        anonymous.post("/runs", json={"agent": "parallel", "input": "add"}, headers=headers),
        anonymous.get(f"/runs/{run_id}", headers=headers),
        anonymous.post(f"/runs/{run_id}/cancel", headers=headers),
        anonymous.post(f"/runs/{run_id}/tickets", headers=headers),
        anonymous.get(f"/runs/{run_id}/events", headers=headers),
    ]

    assert [a.status_code for a in answers] == [401] * 5
    assert [a.headers.get("WWW-Authenticate") for a in answers] == ["Bearer"] * 5


@pytest.mark.parametrize("last_event_id", ["seven", "-1", "1.5", "0x10", "1" * 19])
def test_a_malformed_last_event_id_is_a_bad_request(
    alice: httpx.Client, last_event_id: str
) -> None:
    run_id = start(alice, "parallel")

    answer = alice.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": last_event_id})

    assert answer.status_code == 400, answer.text
    assert "Last-Event-ID" in answer.json()["detail"]


# The event stream.


def test_the_event_stream_carries_each_stored_event_once_in_order_with_its_seq_as_id_then_end(
    alice: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "gated")
    with Follower(alice, f"/runs/{run_id}/events") as follower:
        assert follower.response.status_code == 200
        assert follower.response.headers["content-type"].startswith("text/event-stream")
        follower.read_until("the run waits at its gate", seen(held_at_gate(deployment, run_id)))
        open_gate(deployment.gates, run_id)  # the rest arrives live, deltas too
        sse = follower.read_to_close()

    log = deployment.log(run_id)
    assert [seq for seq, _ in log] == list(range(1, len(log) + 1))
    assert log[-1][1] == "run.succeeded"
    assert sse.stored == log
    for message in sse.messages[:-1]:
        event = message.payload
        assert message.event == "message"
        assert message.id == (None if event["seq"] is None else str(event["seq"]))
        assert event["run_id"] == run_id
    deltas = [m.payload["data"]["text"] for m in sse.messages[:-1] if m.payload["seq"] is None]
    assert "".join(deltas) == "through the gate"
    assert (sse.messages[-1].event, sse.messages[-1].id) == ("end", None)
    assert sse.messages[-1].payload == {"status": "succeeded"}
    assert sse.messages[-2].payload["type"] == "run.succeeded"


def test_resuming_with_last_event_id_mid_run_gives_exactly_the_rest(
    alice: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "gated")
    gate = held_at_gate(deployment, run_id)
    with Follower(alice, f"/runs/{run_id}/events") as first:
        before = first.read_until("the run waits at its gate", seen(gate)).stored
    # The first connection is gone; the second asks for what came after the last id it saw.
    with Follower(alice, f"/runs/{run_id}/events", {"Last-Event-ID": str(gate)}) as second:
        second.read_until("the keepalive after the replay", lambda sse: len(sse.comments) > 1)
        assert second.sse.stored == []  # nothing new while the run waits
        open_gate(deployment.gates, run_id)
        after = second.read_to_close()

    log = deployment.log(run_id)
    assert before == log[:gate]
    assert after.stored == log[gate:]
    assert after.stored[0] == (gate + 1, "tool.completed")
    assert after.ended


def test_last_event_id_at_or_past_the_terminal_event_answers_204_and_just_before_it_the_end(
    alice: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "parallel")
    deployment.finished(run_id)
    last = len(deployment.log(run_id))

    at_end = alice.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": str(last)})
    past_end = alice.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": str(last + 5)})
    by_query = alice.get(f"/runs/{run_id}/events", params={"after": last})
    with Follower(alice, f"/runs/{run_id}/events", {"Last-Event-ID": str(last - 1)}) as before:
        sse = before.read_to_close()

    assert (at_end.status_code, at_end.content) == (204, b"")
    assert (past_end.status_code, by_query.status_code) == (204, 204)
    assert sse.stored == [(last, "run.succeeded")]
    assert [m.event for m in sse.messages] == ["message", "end"]


# Tickets: following without a token, for browsers.


def test_a_ticket_lets_an_unauthenticated_client_follow_its_run_but_not_another(
    alice: httpx.Client, anonymous: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "gated")
    other = start(alice, "parallel")
    answer = alice.post(f"/runs/{run_id}/tickets")
    assert answer.status_code == 201, answer.text
    ticket = answer.json()
    assert ticket["events_url"] == f"/runs/{run_id}/events?ticket={ticket['ticket']}"
    assert ticket["expires_in"] == 3600

    with Follower(anonymous, ticket["events_url"]) as follower:
        assert follower.response.status_code == 200
        follower.read_until("the run waits at its gate", seen(held_at_gate(deployment, run_id)))
        open_gate(deployment.gates, run_id)
        sse = follower.read_to_close()
    elsewhere = anonymous.get(f"/runs/{other}/events", params={"ticket": ticket["ticket"]})
    forged = anonymous.get(ticket["events_url"] + "x")
    no_events = anonymous.get(f"/runs/{run_id}", params={"ticket": ticket["ticket"]})

    assert sse.stored == deployment.log(run_id)
    assert sse.ended
    assert (elsewhere.status_code, forged.status_code, no_events.status_code) == (401, 401, 401)


def test_an_expired_ticket_is_refused(
    alice: httpx.Client, anonymous: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "parallel")
    deployment.finished(run_id)
    lasting = alice.post(f"/runs/{run_id}/tickets").json()
    brief = alice.post(f"/runs/{run_id}/tickets", json={"expires_in": 1}).json()
    assert brief["expires_in"] == 1
    expires = int(brief["ticket"].split(".")[0])
    assert expires <= time.time() + 1

    while time.time() <= expires:  # the clock is the subject here
        time.sleep(0.05)
    with Follower(anonymous, lasting["events_url"]) as follower:
        sse = follower.read_to_close()
    expired = anonymous.get(brief["events_url"])

    assert sse.stored == deployment.log(run_id)
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


@pytest.mark.parametrize("expires_in", [0, -5, 86_401, "soon"])
def test_a_ticket_lifetime_outside_one_second_to_one_day_is_refused(
    alice: httpx.Client, deployment: Deployment, expires_in: object
) -> None:
    run_id = start(alice, "parallel")

    answer = alice.post(f"/runs/{run_id}/tickets", json={"expires_in": expires_in})

    assert answer.status_code == 422, answer.text


# Quiet streams and clients that stop reading.


def test_a_quiet_stream_carries_keepalive_comments(
    alice: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "gated")
    gate = held_at_gate(deployment, run_id)
    with Follower(alice, f"/runs/{run_id}/events") as follower:
        follower.read_until("the run waits at its gate", seen(gate))
        quiet_from = len(follower.sse.messages)
        follower.read_until(
            "two keepalives while the run waits",
            lambda sse: sum(n == quiet_from and "ping" in c for n, c in sse.comments) >= 2,
        )
        open_gate(deployment.gates, run_id)
        sse = follower.read_to_close()

    assert sse.stored == deployment.log(run_id)
    assert len(sse.messages) > quiet_from  # the keepalives came between events


def stall(server: Server, run_id: str, gate: int) -> Stalled:
    """A client that stops reading once the run's replay, up to its gate, has reached it."""
    stalled = Stalled(server.port, run_id, ALICE)
    wait_until("the replay to reach the stalled client", lambda: stalled.received(f'"seq":{gate},'))
    return stalled


def subscribers(run_id: str) -> int:
    """How many Redis connections listen to the run's channel (a server holds one at most)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        ((_, count),) = client.pubsub_numsub(run_channel(run_id))
        return int(count)
    finally:
        client.close()


def test_a_client_that_never_reads_holds_up_neither_another_follower_nor_the_worker(
    alice: httpx.Client, deployment: Deployment
) -> None:
    run_id = start(alice, "verbose")
    gate = held_at_gate(deployment, run_id)
    stalled = stall(deployment.server, run_id, gate)
    try:
        with Follower(alice, f"/runs/{run_id}/events") as follower:
            follower.read_until("the run waits at its gate", seen(gate))
            open_gate(deployment.gates, run_id)
            sse = follower.read_to_close()
        assert deployment.finished(run_id) == "succeeded"
        # Meanwhile the stalled client is still followed, with bytes the server cannot send it.
        state, _ = wait_until(
            "the server to hold unsent bytes for the stalled client",
            lambda: (found := stalled.server_side()) and found[1] > 0 and found,
        )
        assert state == "ESTABLISHED"
        assert subscribers(run_id) == 1
        late = stalled.read_all()  # reading at last, it gets the whole run
    finally:
        stalled.close()

    log = deployment.log(run_id)
    assert sse.stored == log
    assert sse.ended
    # Deltas are best-effort: a follower that fell behind and read the answer's stored
    # event first drops the deltas it had not passed on yet.
    assert sum(m.payload["seq"] is None for m in sse.messages[:-1]) <= ANSWER_WORDS
    assert late.stored == log
    assert late.ended


def stalled_through_a_run(
    alice: httpx.Client, deployment: Deployment, impatient: Server
) -> tuple[str, Stalled]:
    """A `verbose` run that succeeded while a client of `impatient` never read its stream,
    and that client, once the server has stopped following the run for it."""
    run_id = start(alice, "verbose")
    gate = held_at_gate(deployment, run_id)
    stalled = stall(impatient, run_id, gate)
    try:
        open_gate(deployment.gates, run_id)
        assert deployment.finished(run_id) == "succeeded"
        # The server stopped following the run for it, though it never read a byte.
        wait_until("the server to stop following the run", lambda: subscribers(run_id) == 0)
    except BaseException:
        stalled.close()
        raise
    return run_id, stalled


def test_a_client_that_never_reads_is_dropped_after_the_send_timeout_and_can_resume(
    alice: httpx.Client, deployment: Deployment, impatient: Server
) -> None:
    run_id, stalled = stalled_through_a_run(alice, deployment, impatient)
    try:
        cut = stalled.read_all()
        last = cut.stored[-1][0]
        with (
            httpx.Client(base_url=impatient.url, headers=bearer(ALICE), timeout=PATIENCE) as again,
            Follower(again, f"/runs/{run_id}/events", {"Last-Event-ID": str(last)}) as rest,
        ):
            resumed = rest.read_to_close()
    finally:
        stalled.close()

    log = deployment.log(run_id)
    assert not cut.ended
    assert cut.stored == log[:last]  # what it got before the cut: a prefix, without a gap
    assert resumed.stored == log[last:]
    assert resumed.ended
    assert "left events unread" in impatient.output()


def test_a_client_that_never_reads_has_its_connection_closed_after_the_send_timeout(
    alice: httpx.Client, deployment: Deployment, impatient: Server
) -> None:
    _, stalled = stalled_through_a_run(alice, deployment, impatient)
    try:
        held = stalled.server_side()
        # Cut off means let go: the server closes its end, and says so in its log.
        wait_until(
            f"the server to close its end of the stalled connection (it was {held})",
            lambda: (stalled.server_side() or ("gone", 0))[0] != "ESTABLISHED",
            within=PATIENCE,
        )
        assert "left events unread" in impatient.output()
    finally:
        stalled.close()


# The embedded default.


def test_serve_with_nothing_configured_runs_a_demo_run_in_process_and_streams_it_to_the_end(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPWISE_", "CELERY_"))}
    server = Server(env, tmp_path, tmp_path / "server.log", free_port()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=PATIENCE) as client:
            answer = client.post("/runs", json={"agent": "demo", "input": "What is 17 * 23?"})
            assert answer.status_code == 201, answer.text
            run_id = answer.json()["id"]
            with Follower(client, f"/runs/{run_id}/events") as follower:
                sse = follower.read_to_close()
            shown = client.get(f"/runs/{run_id}").json()
    finally:
        server.stop()

    assert "the API is open" in server.output()
    with sqlite3.connect(tmp_path / "stepwise.db") as db:
        log = db.execute(
            "SELECT seq, type FROM stepwise_events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    assert sse.stored == [tuple(row) for row in log]
    assert [seq for seq, _ in sse.stored] == list(range(1, len(log) + 1))
    assert sse.messages[-1].payload == {"status": "succeeded"}
    assert (shown["status"], shown["result"], shown["owner"]) == (
        "succeeded",
        "17 * 23 = 391",
        None,
    )
