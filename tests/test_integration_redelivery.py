"""A step task delivered again finds its record: no second model call, no second tool effect."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks import app, client
from tests.conftest import KEY_PREFIX, REDIS_URL
from tests.test_integration_support import (
    events,
    open_gate,
    run_row,
    settle,
    start_worker,
    steps,
    tallies,
    wait_for_event,
    wait_for_task,
    wait_until,
)


def _send_again(w: Any, run_id: str, *tasks: tuple[str, int]) -> list[str]:
    """Send step tasks for the run as a redelivery would, and wait until the worker ran them."""
    sent = [app.send_task(f"stepwise.{kind}_step", args=[run_id, number]) for kind, number in tasks]
    return [wait_for_task(w, result.id) for result in sent]


def test_a_model_step_sent_again_after_the_run_succeeded_calls_no_model_and_starts_no_step(
    worker: Any, database_url: str
) -> None:
    w = worker()
    run_id = client.start_run("parallel", "add things")
    client.wait(run_id, timeout=30)
    rows = settle(database_url, run_id)
    row, log = run_row(database_url, run_id), events(database_url, run_id)

    lines = _send_again(w, run_id, ("model", 1), ("model", 4))

    assert all(" succeeded " in line for line in lines), lines
    assert steps(database_url, run_id) == rows  # same steps, attempts and task ids
    assert [s["attempts"] for s in rows] == [1, 1, 1, 1]
    assert events(database_url, run_id) == log  # no model.started, nothing new
    assert run_row(database_url, run_id) == row


def test_redelivered_tool_step_does_not_run_the_tool_twice(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    w = start_worker(worker, monkeypatch, tmp_path)
    run_id = client.start_run("tallying", "count")
    wait_for_event(database_url, run_id, "tool.started", step=4)  # held at the gate
    assert tallies(tmp_path, run_id) == ["step 2"]
    log = events(database_url, run_id)

    # Mid-run: the finished tool step and both finished model steps come again.
    _send_again(w, run_id, ("tool", 2), ("model", 1), ("model", 3))

    assert tallies(tmp_path, run_id) == ["step 2"]
    assert events(database_url, run_id) == log
    open_gate(tmp_path, run_id)
    run = client.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    rows = settle(database_url, run_id)

    # And once more after the end.
    _send_again(w, run_id, ("tool", 2), ("tool", 4), ("model", 5))

    assert tallies(tmp_path, run_id) == ["step 2"]
    assert steps(database_url, run_id) == rows
    assert [s["attempts"] for s in rows] == [1, 1, 1, 1, 1]
    kinds = [kind for _, kind, _ in events(database_url, run_id)]
    assert kinds.count("model.started") == 3
    assert kinds.count("tool.started") == 2
    assert kinds[-1] == "run.succeeded"


def test_a_tool_with_its_own_queue_runs_on_that_queue(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    start_worker(worker, monkeypatch, tmp_path, queues="celery,stepwise.model,stepwise.special")
    run_id = client.start_run("routed", "go special")

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert [(s["kind"], s["queue"]) for s in steps(database_url, run_id)] == [
        ("model", "stepwise.model"),
        ("tool", "stepwise.special"),
        ("model", "stepwise.model"),
    ]


def _waiting_on(broker: redis.Redis, queue: str, run_id: str) -> list[bytes]:
    return [m for m in broker.lrange(KEY_PREFIX + queue, 0, -1) if run_id.encode() in m]


def test_a_redelivered_model_step_sends_its_tool_steps_to_the_tools_own_queue(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No worker reads the tool queues yet, so the tool step stays pending: as if
    # the first delivery of model step 1 died after recording its answer.
    w = start_worker(worker, monkeypatch, tmp_path, queues="celery,stepwise.model")
    run_id = client.start_run("routed", "go special")
    broker = redis.Redis.from_url(REDIS_URL)
    try:
        # Sent just after model step 1 commits its answer.
        wait_until(
            "the tool step's message", lambda: _waiting_on(broker, "stepwise.special", run_id)
        )
        assert len(_waiting_on(broker, "stepwise.special", run_id)) == 1
        assert [s["status"] for s in steps(database_url, run_id)] == [
            "succeeded",
            "pending",
            "pending",
        ]

        _send_again(w, run_id, ("model", 1))

        assert _waiting_on(broker, "stepwise.tools", run_id) == []
        assert len(_waiting_on(broker, "stepwise.special", run_id)) == 2
        # Both copies reach a worker of that queue: the tool runs once, the run ends.
        start_worker(worker, monkeypatch, tmp_path, queues="stepwise.special")
        run = client.wait(run_id, timeout=30)
        assert run.status == "succeeded", run.error
        settle(database_url, run_id)
        assert tallies(tmp_path, run_id) == ["step 2"]
        assert [s["queue"] for s in steps(database_url, run_id)] == [
            "stepwise.model",
            "stepwise.special",
            "stepwise.model",
        ]
    finally:
        for queue in ("stepwise.special", "stepwise.tools"):
            for message in _waiting_on(broker, queue, run_id):
                broker.lrem(KEY_PREFIX + queue, 0, message)


def test_a_start_message_sent_twice_calls_the_model_once(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A caller that retries its send_task with the same run id, as it should.
    first = start_worker(worker, monkeypatch, tmp_path, queues="celery")
    run_id = str(uuid.uuid4())
    kwargs = {"agent": "slowpoke", "input": "slowly", "run_id": run_id}
    for result in [app.send_task("stepwise.start_run", kwargs=kwargs) for _ in range(2)]:
        wait_for_task(first, result.id)
    first.stop()

    start_worker(worker, monkeypatch, tmp_path)  # now the model steps run
    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert [s["attempts"] for s in settle(database_url, run_id)] == [1]
    started = [k for _, k, _ in events(database_url, run_id) if k == "model.started"]
    assert len(started) == 1
