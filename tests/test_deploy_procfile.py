"""deploy/Procfile under honcho, started the way deploy/README.md tells a user to.

An env file derived from deploy/.env.example points the stack at a fresh Postgres
database and a Redis key prefix of its own, and at free ports. The test starts
`honcho start`, runs the demo through `honcho run`, checks that the steps ran on the
Procfile's workers and that Flower, the API and beat answer, then stops honcho with
SIGTERM and looks for any process of the stack still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from honcho.environ import parse

from tests.conftest import PG_ADMIN, REDIS_URL, ROOT
from tests.test_integration_support import free_port, steps

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(sys.platform != "linux", reason="looks for leftovers in /proc"),
]

BIN = Path(sys.executable).parent
HONCHO = str(BIN / "honcho")
EXAMPLE = ROOT / "deploy" / ".env.example"
# Every process honcho starts inherits this variable; /proc shows who still has it.
MARK = "STEPWISE_DEPLOY_TEST"
QUESTION = "What is 17 * 23?"

T = TypeVar("T")


def derive_env(example: str, values: Mapping[str, str]) -> str:
    """The example with each variable in `values` set (and uncommented); all must be named."""
    assignment = re.compile(r"^#? ?([A-Z][A-Z0-9_]*)=")
    lines: list[str] = []
    seen: set[str] = set()
    for line in example.splitlines():
        found = assignment.match(line)
        name = found.group(1) if found else ""
        if name in values and name not in seen:
            seen.add(name)
            line = f"{name}={values[name]}"
        lines.append(line)
    missing = sorted(set(values) - seen)
    assert not missing, f"deploy/.env.example does not name {missing}"
    return "\n".join(lines) + "\n"


def user_env(**extra: str) -> dict[str, str]:
    """A shell with the virtual environment active and nothing of Stepwise's set."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    return {**env, **extra}


@dataclass(frozen=True)
class Deployment:
    """The env file a user would have written, and what the test needs to know of it."""

    env_file: Path
    database: str
    database_url: str
    flower_url: str
    flower_auth: tuple[str, str]
    api_url: str
    api_token: str

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`honcho -d . -e <env file> run ARGV…` from the repository root."""
        command = [HONCHO, "-d", ".", "-e", str(self.env_file), "run", *argv]
        return subprocess.run(
            command, cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture
def deployment(services: None, redis_keys: str, tmp_path: Path) -> Deployment:
    """deploy/.env.example made into an env file for this test's database, prefix and ports."""
    database = f"stepwise_deploy_{uuid.uuid4().hex[:10]}"
    database_url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    database_url += f"/{database}"
    flower_port, api_port = free_port(), free_port()
    auth = ("admin", secrets.token_hex(8))
    token = secrets.token_hex(16)
    values = {
        "STEPWISE_DATABASE_URL": database_url,
        "CELERY_BROKER_URL": REDIS_URL,
        "STEPWISE_REDIS_URL": REDIS_URL,
        # Under the session's prefix, so the session's clean-up removes these keys too.
        "STEPWISE_REDIS_KEY_PREFIX": f"{redis_keys}deploy-{uuid.uuid4().hex[:6]}:",
        "FLOWER_BASIC_AUTH": ":".join(auth),
        "FLOWER_PORT": str(flower_port),
        "STEPWISE_API_TOKENS": f"app={token}",
        "STEPWISE_API_PORT": str(api_port),
        "STEPWISE_BEAT_SCHEDULE": str(tmp_path / "celerybeat-schedule"),
        "STEPWISE_WATCHDOG_INTERVAL": "1",  # beat's first send within a second, not a minute
    }
    env_file = tmp_path / "deploy.env"
    env_file.write_text(derive_env(EXAMPLE.read_text(), values))
    assert {k: v for k, v in parse(env_file.read_text()).items() if k in values} == values
    return Deployment(
        env_file=env_file,
        database=database,
        database_url=database_url,
        flower_url=f"http://127.0.0.1:{flower_port}",
        flower_auth=auth,
        api_url=f"http://127.0.0.1:{api_port}",
        api_token=token,
    )


@pytest.fixture
def fresh_database(deployment: Deployment) -> Iterator[str]:
    """The deployment's database: created, migrated with `honcho run stepwise db upgrade`,
    dropped after the test."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{deployment.database}"')
    try:
        upgraded = deployment.run("stepwise", "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert deployment.database in upgraded.stdout
        yield deployment.database_url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{deployment.database}" WITH (FORCE)')


class Honcho:
    """`honcho start` with deploy/Procfile, in a session of its own, and its output."""

    def __init__(self, deployment: Deployment, log: Path) -> None:
        self.log = log
        self.mark = uuid.uuid4().hex
        command = [HONCHO, "-d", ".", "-f", "deploy/Procfile", "-e", str(deployment.env_file)]
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*command, "start"],
                cwd=ROOT,
                env=user_env(**{MARK: self.mark}),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        """Everything honcho has printed so far: its own lines and each process's."""
        return self.log.read_text(errors="replace")

    def find(self, process: str, pattern: str) -> re.Match[str] | None:
        """The first line of `process` (`model`, `tools`…) that matches `pattern`."""
        line = re.compile(rf"^\S+ {re.escape(process)}\.1 *\| (.*)$", re.MULTILINE)
        for found in line.finditer(self.output()):
            match = re.search(pattern, found.group(1))
            if match:
                return match
        return None

    def line(self, process: str, pattern: str) -> re.Match[str]:
        """Wait until `process` prints a line that matches `pattern`; the match."""
        return self.wait_for(
            f"{process}.1 to print {pattern!r}", lambda: self.find(process, pattern)
        )

    def wait_for(self, what: str, check: Callable[[], T | None], within: float = 30) -> T:
        """Poll `check` until it returns something; fail with honcho's output if it never does."""
        deadline = time.monotonic() + within
        while True:
            value = check()
            if value:
                return value
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gave up waiting for {what}; honcho printed:\n{self.output()[-5000:]}")
            time.sleep(0.1)

    def survivors(self) -> list[int]:
        """The processes still alive that honcho or its children started."""
        needle = f"{MARK}={self.mark}".encode()
        alive = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if needle in environ.split(b"\0"):
                alive.append(int(entry.name))
        return alive

    def groups(self) -> list[int]:
        """The process groups honcho started, one per Procfile line (it prints their pids)."""
        return [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", self.output())]

    def kill(self) -> None:
        """SIGKILL to honcho's group, each Procfile line's group and any survivor."""
        for group in [self.process.pid, *self.groups()]:
            with contextlib.suppress(OSError):  # the group is gone already
                os.killpg(group, signal.SIGKILL)
        for pid in self.survivors():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


def flower_get(deployment: Deployment, path: str, auth: tuple[str, str] | None) -> httpx.Response:
    """GET a Flower page, with or without basic authentication."""
    return httpx.get(f"{deployment.flower_url}{path}", auth=auth, timeout=10)


def flower_task(deployment: Deployment, task_id: str) -> dict[str, Any] | None:
    """What Flower learnt of a task from the task events, once it has seen it succeed."""
    found = flower_get(deployment, f"/api/task/info/{task_id}", deployment.flower_auth)
    info: dict[str, Any] | None = found.json() if found.status_code == 200 else None
    return info if info and info.get("state") == "SUCCESS" else None


def answers(url: str) -> bool:
    """Whether something serves 200 at this URL yet."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_procfile_stack_runs_the_demo_under_honcho_and_stops_cleanly(
    deployment: Deployment, fresh_database: str, tmp_path: Path
) -> None:
    honcho = Honcho(deployment, tmp_path / "honcho.log")
    auth = deployment.flower_auth
    try:
        # Both workers are up under the node names and pools the Procfile gives them.
        model = honcho.line("model", r"(model@\S+) ready\.")[1]
        tools = honcho.line("tools", r"(tools@\S+) ready\.")[1]
        assert honcho.find("model", r"concurrency: 200 \(thread\)")
        assert honcho.find("tools", r"concurrency: \d+ \(prefork\)")

        # Beat is alive: it sends the watchdog, which the model worker runs (the default queue).
        honcho.line("beat", r"Sending due task stepwise\.watchdog")
        honcho.line("model", r"Task stepwise\.watchdog\[\S+\] succeeded")

        # Flower answers only with its basic authentication; its healthcheck, which the
        # compose file probes, answers without. It receives the workers' task events.
        honcho.wait_for("Flower", lambda: answers(f"{deployment.flower_url}/healthcheck"))
        assert flower_get(deployment, "/healthcheck", None).text == "OK"
        assert flower_get(deployment, "/", None).status_code == 401
        assert flower_get(deployment, "/api/workers", None).status_code == 401
        assert flower_get(deployment, "/api/workers", ("admin", "wrong")).status_code == 401
        assert flower_get(deployment, "/", auth).status_code == 200

        def flower_saw_a_sweep() -> bool:
            sweeps = flower_get(deployment, "/api/tasks?taskname=stepwise.watchdog", auth).json()
            return any(task.get("worker") == model for task in sweeps.values())

        honcho.wait_for("Flower to see a watchdog sweep", flower_saw_a_sweep)

        # The API answers on the env file's port.
        honcho.wait_for("the API", lambda: answers(f"{deployment.api_url}/health"))
        assert httpx.get(f"{deployment.api_url}/health", timeout=5).json() == {"status": "ok"}

        # The demo, as deploy/README.md runs it: it returns at once, the workers carry on.
        started = deployment.run("stepwise", "run", "demo", QUESTION)
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = started.stdout.strip()
        assert uuid.UUID(run_id)
        followed = deployment.run("stepwise", "follow", run_id, "--json")
        assert followed.returncode == 0, followed.stdout + followed.stderr
        events = [json.loads(line) for line in followed.stdout.splitlines()]
        stored = [event for event in events if event["seq"] is not None]
        assert [event["seq"] for event in stored] == list(range(1, len(stored) + 1))
        assert [(e["type"], e["step"]) for e in stored if e["type"].endswith(".completed")] == [
            ("model.completed", 1),
            ("tool.completed", 2),
            ("model.completed", 3),
        ]
        assert stored[-1]["type"] == "run.succeeded"
        assert "391" in stored[-1]["data"]["result"]

        # Each step ran on the Procfile's worker for its kind, from its queue: the
        # worker's log says so, and so do the task events Flower received.
        done = steps(fresh_database, run_id)
        assert [(s["kind"], s["status"], s["queue"]) for s in done] == [
            ("model", "succeeded", "stepwise.model"),
            ("tool", "succeeded", "stepwise.tools"),
            ("model", "succeeded", "stepwise.model"),
        ]
        for step in done:
            process, node = ("model", model) if step["kind"] == "model" else ("tools", tools)
            task = f"stepwise.{step['kind']}_step[{step['task_id']}]"
            # Logged once the task returns, which for the last step may follow the run's end.
            honcho.line(process, re.escape(task) + " succeeded")
            seen = partial(flower_task, deployment, step["task_id"])
            info = honcho.wait_for(f"Flower to see {task}", seen)
            assert info["worker"] == node

        # The API reads the same database, behind the env file's token.
        run_url = f"{deployment.api_url}/runs/{run_id}"
        assert httpx.get(run_url, timeout=5).status_code == 401
        bearer = {"authorization": f"Bearer {deployment.api_token}"}
        assert httpx.get(run_url, headers=bearer, timeout=5).json()["status"] == "succeeded"

        # SIGTERM to honcho stops every process it started; nothing is left behind.
        running = honcho.survivors()  # honcho, its five helpers, five commands, pool children
        assert honcho.process.pid in running and len(running) >= 11, running
        honcho.process.send_signal(signal.SIGTERM)
        assert honcho.process.wait(30) == 128 + signal.SIGTERM
        for name in ("model", "tools", "beat", "flower", "api"):
            assert re.search(rf"\| {name}\.1 stopped \(rc=", honcho.output()), name
        deadline = time.monotonic() + 10
        while honcho.survivors() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert honcho.survivors() == []
    finally:
        honcho.kill()
