"""Agents, tools and helpers shared by the integration tests (no tests in here).

Workers load this module as an agents module (STEPWISE_AGENTS), so it imports
nothing from the test fixtures: `tests.conftest` picks a fresh session prefix on
import, which a worker must never do.

The tools coordinate with the test through files in a folder both sides know
(STEPWISE_TEST_GATES): a gate opens when the test creates `<run id>.open`, so a
test decides when a run moves on, and nothing depends on how fast anything is.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg
import pytest

from tasks import Agent, ToolContext, tool

AGENTS = "tests.agents,tests.test_integration_support"
STEPWISE = str(Path(sys.executable).parent / "stepwise")
GATES_ENV = "STEPWISE_TEST_GATES"
# How long a tool waits for the test before it gives up (a failing test, never a hang).
PATIENCE = 20.0


def _gates() -> Path:
    return Path(os.environ[GATES_ENV])


@tool
def gate(ctx: ToolContext) -> str:
    """Wait until the test opens this run's gate."""
    opened = _gates() / f"{ctx.run_id}.open"
    deadline = time.monotonic() + PATIENCE
    while not opened.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate of run {ctx.run_id} never opened")
        time.sleep(0.02)
    return "the gate opened"


@tool
def rendezvous(ctx: ToolContext) -> str:
    """Wait until the other call of this round is running too: only parallel steps meet."""
    folder = _gates()
    (folder / f"{ctx.run_id}.meet.{ctx.step}").touch()
    deadline = time.monotonic() + PATIENCE
    while len(list(folder.glob(f"{ctx.run_id}.meet.*"))) < 2:
        if time.monotonic() > deadline:
            return f"step {ctx.step} waited alone"
        time.sleep(0.02)
    return f"step {ctx.step} met its partner"


@tool(idempotent=True)
def safe_gate(ctx: ToolContext) -> str:
    """Note the effect id, then wait at the gate: safe to run again with the same id."""
    with (_gates() / f"{ctx.run_id}.effects").open("a") as marks:
        marks.write(f"{ctx.effect_id} {ctx.attempt}\n")
    gate.fn(ctx)
    return "the safe gate opened"


@tool(timeout=1.0)
def dawdle(ctx: ToolContext) -> str:
    """Wait at the gate, far past this tool's timeout, then leave a mark."""
    gate.fn(ctx)
    _mark(ctx)
    return "finished late"


@tool
def bump(ctx: ToolContext) -> str:
    """Add one to this call's counter in Postgres, keyed by effect id, between two naps."""
    url = os.environ["STEPWISE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    time.sleep(random.uniform(0, 0.2))
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "INSERT INTO chaos_effects (effect_id, runs) VALUES (%s, 1) "
            "ON CONFLICT (effect_id) DO UPDATE SET runs = chaos_effects.runs + 1",
            (ctx.effect_id,),
        )
    time.sleep(random.uniform(0, 0.2))
    return "bumped"


def _mark(ctx: ToolContext) -> None:
    with (_gates() / f"{ctx.run_id}.tally").open("a") as marks:
        marks.write(f"step {ctx.step}\n")


@tool
def tally(ctx: ToolContext) -> str:
    """Leave a mark each time the tool really runs."""
    _mark(ctx)
    return "counted"


@tool(queue="stepwise.special")
def special(ctx: ToolContext) -> str:
    """A tool that only the workers of its own queue run; it leaves a mark too."""
    _mark(ctx)
    return f"step {ctx.step} ran on the special queue"


def _calls(*calls: tuple[str, dict[str, object]]) -> dict[str, object]:
    return {"tool_calls": [{"name": n, "arguments": a} for n, a in calls]}


# Two tool calls that can only both succeed quickly when they run at the same time.
pair = Agent(
    name="pair",
    instructions="Meet.",
    model="scripted:pair",
    tools=(rendezvous,),
    model_settings={"script": [_calls(("rendezvous", {}), ("rendezvous", {})), {"text": "met"}]},
)

# Holds at a gate the test opens, then two parallel tool calls and a final answer.
gated = Agent(
    name="gated",
    instructions="Wait at the gate.",
    model="scripted:gated",
    tools=(gate, tally),
    model_settings={
        "script": [
            _calls(("gate", {})),
            _calls(("tally", {}), ("tally", {})),
            {"text": "through the gate"},
        ]
    },
)

# Holds at a gate whose tool is idempotent, then answers.
gated_safely = Agent(
    name="gated_safely",
    instructions="Wait at the safe gate.",
    model="scripted:gated_safely",
    tools=(safe_gate,),
    model_settings={"script": [_calls(("safe_gate", {})), {"text": "through the safe gate"}]},
)

# Holds at a gate; a call whose worker dies fails the run instead of being reported.
gated_strictly = Agent(
    name="gated_strictly",
    instructions="Wait at the gate, strictly.",
    model="scripted:gated_strictly",
    tools=(gate,),
    on_unknown_outcome="fail",
    model_settings={"script": [_calls(("gate", {})), {"text": "through the gate"}]},
)

# Holds at a gate, with two-second steps: a lost step stalls the run soon.
gated_briefly = Agent(
    name="gated_briefly",
    instructions="Wait at the gate, briefly.",
    model="scripted:gated_briefly",
    tools=(gate,),
    step_timeout=2.0,
    model_settings={"script": [_calls(("gate", {})), {"text": "resumed and done"}]},
)

# Two parallel counted calls between two slowish model calls: room for kills anywhere.
chaotic = Agent(
    name="chaotic",
    instructions="Bump twice.",
    model="scripted:chaotic",
    tools=(bump,),
    step_timeout=3.0,  # the watchdog finds a lost step within seconds
    model_settings={
        "script": [_calls(("bump", {}), ("bump", {})), {"text": "bumped"}],
        "delay": 0.15,
    },
)

# A tool that overruns its one-second timeout, then a final answer.
dawdling = Agent(
    name="dawdling",
    instructions="Dawdle.",
    model="scripted:dawdling",
    tools=(dawdle,),
    model_settings={"script": [_calls(("dawdle", {})), {"text": "moved on"}]},
)

# Runs a counted tool, then holds at a gate, then answers.
tallying = Agent(
    name="tallying",
    instructions="Count, then wait.",
    model="scripted:tallying",
    tools=(tally, gate),
    model_settings={"script": [_calls(("tally", {})), _calls(("gate", {})), {"text": "tallied"}]},
)

# One tool call routed to the tool's own queue.
routed = Agent(
    name="routed",
    instructions="Use the special tool.",
    model="scripted:routed",
    tools=(special,),
    model_settings={"script": [_calls(("special", {})), {"text": "special done"}]},
)

# One slow model call and a final answer.
slowpoke = Agent(
    name="slowpoke",
    instructions="Take your time.",
    model="scripted:slowpoke",
    model_settings={"script": [{"text": "took my time"}], "delay": 1.0},
)

# Two parallel tool calls: one held at a gate, one on its own queue.
split = Agent(
    name="split",
    instructions="Wait at the gate and use the special tool.",
    model="scripted:split",
    tools=(gate, special),
    model_settings={"script": [_calls(("gate", {}), ("special", {})), {"text": "both done"}]},
)

# Held at a gate, then 40 parallel tool calls that each return a quarter of a megabyte,
# then an answer streamed in 500 deltas: 10 MB in small pieces, more than twice what
# Linux lets a socket's send buffer grow to by default (tcp_wmem: 4 MB), so a client
# that stops reading is stuck long before the end of the run.
RECITALS = 40
ANSWER_WORDS = 500


@tool
def recite(ctx: ToolContext) -> str:
    """A quarter of a megabyte of text."""
    return f"step {ctx.step}: " + "~" * 250_000


verbose = Agent(
    name="verbose",
    instructions="Wait at the gate, then say a lot.",
    model="scripted:verbose",
    tools=(gate, recite),
    model_settings={
        "script": [
            _calls(("gate", {})),
            _calls(*[("recite", {})] * RECITALS),
            {"text": " ".join(f"word{i:03d}" for i in range(ANSWER_WORDS))},
        ]
    },
)


# Helpers for the test process.


def start_worker(
    worker: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    gates: Path,
    extra_env: dict[str, str] | None = None,
    **options: Any,
) -> Any:
    """A worker that knows these agents; the test process learns them too."""
    monkeypatch.setenv("STEPWISE_AGENTS", AGENTS)
    monkeypatch.setenv(GATES_ENV, str(gates))
    env = {"STEPWISE_AGENTS": AGENTS, GATES_ENV: str(gates), **(extra_env or {})}
    return worker(extra_env=env, **options)


def open_gate(gates: Path, run_id: str) -> None:
    """Let the run's `gate` tool return."""
    (gates / f"{run_id}.open").touch()


def effects(gates: Path, run_id: str) -> list[tuple[str, int]]:
    """(effect id, attempt) for each time `safe_gate` really ran for the run."""
    marks = gates / f"{run_id}.effects"
    lines = marks.read_text().splitlines() if marks.exists() else []
    return [(effect, int(attempt)) for effect, attempt in (line.split() for line in lines)]


def tallies(gates: Path, run_id: str) -> list[str]:
    """One line per time the `tally` tool really ran for the run."""
    marks = gates / f"{run_id}.tally"
    return marks.read_text().splitlines() if marks.exists() else []


def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows straight from Postgres, without the code under test in between."""
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        return db.execute(sql, params).fetchall()


def events(database_url: str, run_id: str) -> list[tuple[int, str, int | None]]:
    """The run's stored events as (seq, type, step), in order."""
    rows = query(
        database_url,
        "SELECT seq, type, step FROM stepwise_events WHERE run_id = %s ORDER BY seq",
        run_id,
    )
    return [(seq, kind, step) for seq, kind, step in rows]


def steps(database_url: str, run_id: str) -> list[dict[str, Any]]:
    """The run's step rows, in order, with the columns the client does not show."""
    rows = query(
        database_url,
        "SELECT number, kind, status, attempts, task_id, queue FROM stepwise_steps "
        "WHERE run_id = %s ORDER BY number",
        run_id,
    )
    keys = ("number", "kind", "status", "attempts", "task_id", "queue")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def run_row(database_url: str, run_id: str) -> dict[str, Any]:
    """The run's row: status, error, cancel flag, last sequence number, finish time."""
    keys = ("status", "error", "cancel_requested", "last_seq", "finished_at")
    rows = query(
        database_url,
        f"SELECT {', '.join(keys)} FROM stepwise_runs WHERE id = %s",
        run_id,
    )
    return dict(zip(keys, rows[0], strict=True))


def wait_until(what: str, check: Callable[[], Any], within: float = 20.0) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` if it never does."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.02)


def wait_for_event(database_url: str, run_id: str, kind: str, step: int | None = None) -> int:
    """Wait until the run has stored an event of this type (for this step); its seq."""

    def seen() -> int | None:
        return next(
            (s for s, k, n in events(database_url, run_id) if k == kind and step in (None, n)),
            None,
        )

    seq: int = wait_until(f"{kind} of run {run_id}", seen)
    return seq


def wait_for_task(worker: Any, task_id: str) -> str:
    """Wait until the worker logs that the task finished; that log line."""
    pattern = re.compile(rf"Task \S+\[{re.escape(task_id)}\] (succeeded|raised|retry)[^\n]*")

    def logged() -> str | None:
        found = pattern.search(worker.output())
        return found.group(0) if found else None

    line: str = wait_until(f"task {task_id} in the worker log", logged)
    return line


def settle(database_url: str, run_id: str) -> list[dict[str, Any]]:
    """Wait until none of the run's steps is pending or running (tasks still on their
    way after the run ended skip their steps); the steps then."""

    def ended() -> list[dict[str, Any]] | None:
        rows = steps(database_url, run_id)
        return None if any(s["status"] in ("pending", "running") for s in rows) else rows

    rows: list[dict[str, Any]] = wait_until(f"the steps of run {run_id} to end", ended)
    return rows


def free_port() -> int:
    """A TCP port nothing on 127.0.0.1 listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Service(ABC):
    """A real HTTP service process on 127.0.0.1 that the tests start, stop or kill, and its log."""

    health = "/health"

    def __init__(self, env: dict[str, str], cwd: Path, log: Path, port: int) -> None:
        self.env = env
        self.cwd = cwd
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that starts it."""

    def start(self) -> Self:
        """Start it, and wait until it answers its health path."""
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                self.command(), cwd=self.cwd, env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.command()[:4]} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}{self.health}", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        """Everything it has logged so far (from every start of it)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: it dies with its connections open, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Server(Service):
    """A real `stepwise serve` process."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path, port: int, *options: str) -> None:
        super().__init__(env, cwd, log, port)
        self.options = options

    def command(self) -> list[str]:
        return [STEPWISE, "serve", "--port", str(self.port), *self.options]


class Flower(Service):
    """A real `celery -A tasks flower` process with basic auth, and its HTTP API."""

    health = "/healthcheck"

    def __init__(
        self, env: dict[str, str], cwd: Path, log: Path, port: int, user: str, password: str
    ) -> None:
        super().__init__({**env, "FLOWER_BASIC_AUTH": f"{user}:{password}"}, cwd, log, port)
        self.auth = (user, password)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "tasks", "flower",
            f"--port={self.port}", "--address=127.0.0.1",
        ]  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        """GET an API path with the credentials; its JSON."""
        response = httpx.get(f"{self.url}{path}", params=params, auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def wait_for_worker(self, hostname: str) -> None:
        """Wait until Flower has heard the worker's events: from then on it sees every task."""
        wait_until(
            f"flower to see worker {hostname}",
            lambda: self.api("/api/workers", status="true").get(hostname),
            within=30,
        )
