"""Flower, as a real process on the test broker, shows each step of a run as a named task.

The worker and Flower are real processes; the test reads what an operator would
see through Flower's HTTP API: task names, states and arguments (a run id and a
step number, never the input or the answer), failures and retries with a readable
error, and nothing at all without credentials.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks import Agent, app, client
from tests import fake_openai as wire
from tests.agents import add
from tests.fake_openai import FakeOpenAI
from tests.test_integration_support import (
    Flower,
    free_port,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.services

USER, PASSWORD = "operator", "flower-test-password"
TERMINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED", "REJECTED", "IGNORED")

# A tool call, then no turn left: model step 3 fails the run with a Fatal error.
unfinished = Agent(
    name="unfinished",
    instructions="Add, then say nothing.",
    model="scripted:unfinished",
    tools=(add,),
    model_settings={"script": [{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}]},
)

# One answer from the local OpenAI-compatible server.
answerer = Agent(
    name="answerer",
    instructions="Answer briefly.",
    model="openai:fake-model",
    model_settings={"timeout": 30},
)

AGENTS = "tests.agents,tests.test_integration_support,tests.test_integration_flower"
# Workers import this module for its agents, so it must not import tests.conftest, which
# sets a new session's environment on import.
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def flower(distributed: dict[str, str], tmp_path: Path) -> Iterator[Flower]:
    """A Flower process with basic auth on this session's broker."""
    env = {**os.environ, **distributed, "PYTHONPATH": str(ROOT)}
    process = Flower(env, ROOT, tmp_path / "flower.log", free_port(), USER, PASSWORD).start()
    yield process
    process.stop()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """The local Chat Completions server the `openai:` agents talk to."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def observed(
    worker: Callable[..., Any],
    flower: Flower,
    server: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Flower:
    """A worker that knows this module's agents, and Flower once it has heard that worker."""
    monkeypatch.setattr("tests.test_integration_support.AGENTS", AGENTS)
    openai = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    started = start_worker(worker, monkeypatch, tmp_path, extra_env=openai)
    flower.wait_for_worker(f"{started.name}@{socket.gethostname()}")
    return flower


def _arguments(task: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A task's positional and keyword arguments, from the reprs Flower shows."""
    args = ast.literal_eval(task["args"]) if task.get("args") else ()
    kwargs = ast.literal_eval(task["kwargs"]) if task.get("kwargs") else {}
    return tuple(args), dict(kwargs)


def _tasks_of(flower: Flower, run_id: str) -> list[dict[str, Any]]:
    """Every task Flower lists whose arguments name the run."""
    listed: dict[str, dict[str, Any]] = flower.api("/api/tasks")
    return [
        {"uuid": task_id, **task}
        for task_id, task in listed.items()
        if run_id in f"{task.get('args')} {task.get('kwargs')}"
    ]


def _settled(flower: Flower, run_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until Flower lists `count` tasks of the run, all in a final state."""

    def done() -> list[dict[str, Any]] | None:
        found = _tasks_of(flower, run_id)
        finished = len(found) == count and all(t["state"] in TERMINAL_STATES for t in found)
        return found if finished else None

    tasks: list[dict[str, Any]] = wait_until(f"flower to list {count} tasks of {run_id}", done, 30)
    return tasks


def test_flower_lists_every_step_by_name_with_the_run_id_and_step_as_arguments(
    observed: Flower,
) -> None:
    private = f"add these up for account {uuid.uuid4().hex}"
    run_id = client.start_run("parallel", private)
    run = client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error

    tasks = _settled(observed, run_id, 5)  # the last model step ends the run itself

    shown = sorted((t["name"], _arguments(t)) for t in tasks)
    assert shown == sorted(
        [
            ("stepwise.start_run", ((), {"run_id": run_id})),
            ("stepwise.model_step", ((run_id, 1), {})),
            ("stepwise.tool_step", ((run_id, 2), {})),
            ("stepwise.tool_step", ((run_id, 3), {})),
            ("stepwise.model_step", ((run_id, 4), {})),
        ]
    )
    assert {t["state"] for t in tasks} == {"SUCCESS"}
    [start] = [t for t in tasks if t["name"] == "stepwise.start_run"]
    assert {t["root_id"] for t in tasks} == {start["uuid"]}  # one tree per run
    everything = json.dumps(observed.api("/api/tasks"))
    details = [observed.api(f"/api/task/info/{t['uuid']}") for t in tasks]
    metrics = httpx.get(f"{observed.url}/metrics", timeout=10).text  # open to anyone
    assert "stepwise.model_step" in metrics and run_id not in metrics
    for text in (everything, *map(json.dumps, details), metrics):
        assert private not in text
        assert run.result and run.result not in text
    by_name = {d["name"]: d for d in details}
    assert by_name["stepwise.model_step"]["routing_key"] == "stepwise.model"
    assert by_name["stepwise.tool_step"]["routing_key"] == "stepwise.tools"


def test_flowers_api_refuses_a_caller_without_credentials(flower: Flower) -> None:
    def status(path: str, auth: tuple[str, str] | None = None) -> int:
        return httpx.get(f"{flower.url}{path}", auth=auth, timeout=10).status_code

    assert status("/api/tasks") == 401
    assert status("/api/tasks", (USER, "not-the-password")) == 401
    assert status("/api/tasks", (USER, PASSWORD)) == 200
    # The pages need the credentials too; the health check and the metrics answer anyone.
    assert status("/tasks") == 401
    assert status("/healthcheck") == 200
    assert status("/metrics") == 200


def test_a_start_message_that_names_no_agent_fails_in_flower_with_a_readable_error(
    observed: Flower,
) -> None:
    run_id = str(uuid.uuid4())
    app.send_task(
        "stepwise.start_run", kwargs={"run_id": run_id, "agent": "nobody", "input": "hello"}
    )

    [task] = _settled(observed, run_id, 1)

    assert task["name"] == "stepwise.start_run"
    assert task["state"] == "FAILURE"
    assert "UnknownAgent" in task["exception"] and "nobody" in task["exception"]
    assert "tasks.errors.UnknownAgent: unknown agent 'nobody'" in task["traceback"]
    assert task["retries"] == 0


def test_a_retried_model_step_shows_the_providers_error_and_its_retries(
    observed: Flower, server: FakeOpenAI
) -> None:
    server.reply(
        wire.error(429, "Rate limit reached for requests", headers={"retry-after": "1"}),
        wire.Stream(wire.text_deltas("Paris.")),
    )
    run_id = client.start_run("answerer", "Capital of France?")
    run = client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error

    tasks = _settled(observed, run_id, 2)

    [model] = [t for t in tasks if t["name"] == "stepwise.model_step"]
    assert model["state"] == "SUCCESS"
    assert model["retries"] == 1
    # The retry's reason stays on the task after it succeeds.
    assert "HTTP 429: Rate limit reached for requests" in model["exception"]


def test_a_model_step_that_fails_its_run_fails_in_flower_with_the_reason(
    observed: Flower,
) -> None:
    run_id = client.start_run("unfinished", "one tool call, then nothing")
    run = client.wait(run_id, timeout=60)
    assert run.status == "failed"
    assert run.error and "ran out of script at turn 2" in run.error

    tasks = _settled(observed, run_id, 4)

    [last] = [t for t in tasks if _arguments(t)[0] == (run_id, 3)]
    assert last["name"] == "stepwise.model_step"
    assert last["retries"] == 0  # failing the task retries nothing
    assert last["state"] == "FAILURE"
    assert "ran out of script at turn 2" in last["exception"]
