"""A real worker, the real OpenAI SDK and a local Chat Completions server: retries end to end.

The server answers as the API would (a 429 with Retry-After, a stream cut short, a
call that hangs while the worker dies); the run's event log shows what followers
and operators see, and the server's request log shows what was paid for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tasks import Agent, client
from tests import fake_openai as wire
from tests.fake_openai import FakeOpenAI
from tests.test_integration_support import query, settle, start_worker, wait_until

API_KEY = "sk-test-not-a-real-key"

streamer = Agent(
    name="streamer",
    instructions="Answer briefly.",
    model="openai:fake-model",
    model_settings={"timeout": 30},
)

AGENTS = "tests.test_integration_support,tests.test_integration_provider_retries"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def start(
    worker: Any, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Any]:
    """Starts a worker that knows `streamer` and talks to the fake server; env on top."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setattr("tests.test_integration_support.AGENTS", AGENTS)

    def start_one(**env: str) -> Any:
        extra = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": API_KEY, **env}
        return start_worker(worker, monkeypatch, tmp_path, extra_env=extra)

    return start_one


def _log(database_url: str, run_id: str) -> list[tuple[str, int | None, dict[str, Any], datetime]]:
    rows = query(
        database_url,
        "SELECT type, step, data, created_at FROM stepwise_events WHERE run_id = %s ORDER BY seq",
        run_id,
    )
    return [(kind, step, data, at) for kind, step, data, at in rows]


def followed_run(question: str) -> tuple[Any, list[dict[str, Any]]]:
    """A `streamer` run to its end, and all a follower that started with it saw."""
    run_id = client.start_run("streamer", question)
    seen: list[dict[str, Any]] = []
    follower = threading.Thread(target=lambda: seen.extend(client.follow(run_id, timeout=60)))
    follower.start()
    run = client.wait(run_id, timeout=60)
    follower.join(60)
    return run, seen


def _model_events(log: list[tuple[str, int | None, dict[str, Any], datetime]]) -> list[str]:
    return [kind for kind, _, _, _ in log if kind.startswith("model.")]


def test_a_429_with_retry_after_is_honoured_by_the_celery_retry_on_a_real_worker(
    start: Callable[..., Any], server: FakeOpenAI, database_url: str
) -> None:
    start()
    server.reply(
        wire.error(429, "Rate limit reached for requests", headers={"retry-after": "2"}),
        wire.Stream(wire.text_deltas("Paris.")),
    )
    run_id = client.start_run("streamer", "Capital of France?")

    run = client.wait(run_id, timeout=60)

    assert run.status == "succeeded", run.error
    assert run.result == "Paris."
    assert len(server.requests) == 2  # the SDK itself did not retry: the task did
    log = _log(database_url, run_id)
    assert _model_events(log) == [
        "model.started",
        "model.retrying",
        "model.started",
        "model.completed",
    ]
    [(_, _, retrying, noted)] = [e for e in log if e[0] == "model.retrying"]
    assert retrying["countdown"] == 2.0
    assert retrying["attempt"] == 1
    assert "HTTP 429" in retrying["error"] and "fake-model" in retrying["error"]
    [_, (_, _, again, restarted)] = [e for e in log if e[0] == "model.started"]
    assert again["attempt"] == 2
    assert (restarted - noted).total_seconds() >= 1.9  # the server's delay, not an instant retry
    # No stream went out before the 429, so there is nothing to take back.
    assert "model.retracted" not in _model_events(log)


def test_a_400_fails_the_run_with_a_message_naming_the_model(
    start: Callable[..., Any], server: FakeOpenAI, database_url: str
) -> None:
    start()
    server.reply(wire.error(400, "Invalid value for 'temperature': must be at most 2."))
    run_id = client.start_run("streamer", "Capital of France?")

    run = client.wait(run_id, timeout=60)

    assert run.status == "failed"
    assert run.error == (
        "model step 1 failed: openai model 'fake-model' rejected the request (HTTP 400): "
        "Invalid value for 'temperature': must be at most 2."
    )
    assert len(server.requests) == 1
    assert _model_events(_log(database_url, run_id)) == ["model.started"]


def test_a_stream_cut_short_is_retracted_so_a_follower_keeps_only_the_retried_answer(
    start: Callable[..., Any], server: FakeOpenAI, database_url: str
) -> None:
    start()
    # The second reply waits a little, so the follower below is listening when it streams.
    server.reply(
        wire.Stream(wire.text_deltas("The capital ", "of France is Ly"), cut=True),
        wire.Hang(1.0, wire.Stream(wire.text_deltas("The capital ", "of France is Paris."))),
    )
    run, seen = followed_run("Capital of France?")

    assert run.status == "succeeded", run.error
    log = _log(database_url, run.id)
    assert _model_events(log) == [
        "model.started",
        "model.retracted",
        "model.retrying",
        "model.started",
        "model.completed",
    ]
    [(_, step, retracted, _)] = [e for e in log if e[0] == "model.retracted"]
    assert step == 1
    assert retracted == {"attempt": 1, "reason": "the call failed and will be retried"}
    # A follower that drops the deltas a retraction voids ends with the stored answer.
    text: dict[int, str] = {}
    for event in seen:
        if event["type"] == "model.delta":
            text[event["data"]["attempt"]] = text.get(event["data"]["attempt"], "")
            text[event["data"]["attempt"]] += event["data"]["text"]
        elif event["type"] == "model.retracted":
            text.pop(event["data"]["attempt"], None)
    assert text == {2: "The capital of France is Paris."}


def test_a_model_step_whose_worker_dies_mid_call_is_retracted_and_called_again(
    start: Callable[..., Any], server: FakeOpenAI, database_url: str
) -> None:
    short = {"STEPWISE_VISIBILITY_TIMEOUT": "2", "STEPWISE_TIMING_CHECK": "warn"}
    doomed = start(**short)
    server.reply(
        wire.Hang(30, wire.Stream(wire.text_deltas("never sent"))),
        wire.Stream(wire.text_deltas("Paris.")),
    )
    run_id = client.start_run("streamer", "Capital of France?")
    wait_until("the first model call to reach the server", lambda: server.requests)

    doomed.kill()  # mid-call, as in a crash
    time.sleep(2.5)  # past the visibility timeout: the next worker restores the message
    start(**short)
    run = client.wait(run_id, timeout=60)

    assert run.status == "succeeded", run.error
    assert run.result == "Paris."
    log = _log(database_url, run_id)
    assert _model_events(log) == [
        "model.started",
        "model.retracted",
        "model.started",
        "model.completed",
    ]
    [(_, _, retracted, _)] = [e for e in log if e[0] == "model.retracted"]
    assert retracted == {"attempt": 1, "reason": "the earlier attempt was interrupted"}
    [model] = settle(database_url, run_id)
    assert model["attempts"] == 2


def test_a_model_without_a_price_records_its_tokens_and_no_cost(
    start: Callable[..., Any], server: FakeOpenAI
) -> None:
    start()
    server.reply(wire.Stream(wire.text_deltas("Paris.")))
    run_id = client.start_run("streamer", "Capital of France?")

    run = client.wait(run_id, timeout=60)

    assert run.status == "succeeded", run.error
    assert run.usage.input_tokens > 0
    assert run.cost_usd is None
    [step] = client.get_steps(run_id)
    assert step.usage == run.usage
    assert step.cost_usd is None
