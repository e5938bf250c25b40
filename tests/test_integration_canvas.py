"""A run is a canvas of separate Celery tasks on the right queues, with a gapless event log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage.events import TERMINAL_EVENTS
from tasks import client
from tests.test_integration_support import events, start_worker, steps


def test_parallel_tool_calls_run_as_separate_tasks_on_their_queues_and_log_events_1_to_n(
    worker: Any, database_url: str
) -> None:
    worker()
    run_id = client.start_run("parallel", "add things")

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    rows = steps(database_url, run_id)
    assert [(s["number"], s["kind"], s["status"]) for s in rows] == [
        (1, "model", "succeeded"),
        (2, "tool", "succeeded"),
        (3, "tool", "succeeded"),
        (4, "model", "succeeded"),
    ]
    task_ids = [s["task_id"] for s in rows]
    assert all(task_ids), rows
    assert len(set(task_ids)) == len(rows), "each step is one Celery task execution"
    queues = ["stepwise.model", "stepwise.tools", "stepwise.tools", "stepwise.model"]
    assert [s["queue"] for s in rows] == queues
    assert [s.queue for s in client.get_steps(run_id)] == queues  # the client shows them too
    log = events(database_url, run_id)
    assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1))
    kinds = [kind for _, kind, _ in log]
    assert [k for k in kinds if k in TERMINAL_EVENTS] == ["run.succeeded"]
    assert kinds[-1] == "run.succeeded"
    assert kinds[:4] == ["run.queued", "run.started", "model.started", "model.completed"]
    assert kinds.count("tool.started") == kinds.count("tool.completed") == 2


def test_parallel_tool_calls_run_at_the_same_time_on_a_worker_with_several_slots(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each `rendezvous` call returns only once the other one is running too, so
    # the order of events shows overlap without measuring time.
    start_worker(worker, monkeypatch, tmp_path, concurrency=4)
    run_id = client.start_run("pair", "meet")

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    kinds = [kind for _, kind, step in events(database_url, run_id) if step in (2, 3)]
    assert kinds[:2] == ["tool.started", "tool.started"], kinds
    assert sorted(kinds[2:]) == ["tool.completed", "tool.completed"]
    outputs = [s.output["content"] for s in client.get_steps(run_id) if s.kind == "tool"]
    assert outputs == ["step 2 met its partner", "step 3 met its partner"]
