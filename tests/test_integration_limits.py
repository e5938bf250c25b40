"""Cancellation, max_steps and deadlines end runs at step boundaries, and ended runs stay ended."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from storage.events import TERMINAL_EVENTS
from tasks import app, client
from tests.test_integration_support import (
    events,
    open_gate,
    run_row,
    settle,
    start_worker,
    steps,
    wait_for_event,
    wait_for_task,
    wait_until,
)

STARTS = ("model.started", "tool.started")


def test_cancel_while_running_ends_the_run_cancelled_and_starts_no_step_after_the_request(
    worker: Any, database_url: str
) -> None:
    worker()
    run_id = client.start_run("sleeper", "nap")
    wait_for_event(database_url, run_id, "tool.started", step=2)

    client.cancel(run_id)
    run = client.wait(run_id, timeout=30)
    rows = settle(database_url, run_id)

    assert run.status == "cancelled"
    assert run.error == "cancelled on request"
    assert {s["status"] for s in rows} <= {"succeeded", "cancelled"}
    log = events(database_url, run_id)
    requested = [seq for seq, kind, _ in log if kind == "run.cancel_requested"]
    assert len(requested) == 1
    # A step that came up after the request was skipped, never started.
    after = [kind for seq, kind, _ in log if seq > requested[0]]
    assert not set(after) & set(STARTS), after
    assert set(after) <= {"tool.completed", "model.completed", "run.cancelled", "step.skipped"}
    skipped = {step for _, kind, step in log if kind == "step.skipped"}
    assert skipped == {s["number"] for s in rows if s["status"] == "cancelled"}
    assert [kind for _, kind, _ in log if kind in TERMINAL_EVENTS] == ["run.cancelled"]


def test_cancel_before_any_worker_takes_the_run_ends_it_at_once_and_nothing_runs_later(
    worker: Any, database_url: str
) -> None:
    run_id = client.start_run("parallel", "add things")  # no worker yet: it stays queued

    assert client.cancel(run_id).status == "cancelled"
    w = worker()
    wait_until(
        "the worker took the run's start message",
        lambda: re.search(rf"stepwise\.start_run\[\S+\] succeeded[^\n]*{run_id}", w.output()),
    )

    assert client.get_run(run_id).status == "cancelled"
    assert [kind for _, kind, _ in events(database_url, run_id)] == ["run.queued", "run.cancelled"]
    assert steps(database_url, run_id) == []


def test_cancel_of_a_finished_run_changes_nothing(worker: Any, database_url: str) -> None:
    worker()
    run_id = client.start_run("parallel", "add things")
    client.wait(run_id, timeout=30)
    row, log = run_row(database_url, run_id), events(database_url, run_id)

    info = client.cancel(run_id)

    assert info.status == "succeeded"
    assert info.result == "1+2 and 3+4 are done"
    assert run_row(database_url, run_id) == row
    assert row["cancel_requested"] is False
    assert events(database_url, run_id) == log


def _send_everything_again(w: Any, database_url: str, run_id: str) -> None:
    """Every step task of the ended run again, one for a step that never existed, and the
    run's other tasks; wait until the worker ran them all."""
    rows = steps(database_url, run_id)
    sent = [app.send_task(f"stepwise.{s['kind']}_step", args=[run_id, s["number"]]) for s in rows]
    sent.append(app.send_task("stepwise.model_step", args=[run_id, len(rows) + 1]))
    sent.append(app.send_task("stepwise.finish_run", args=[run_id]))
    sent.append(app.send_task("stepwise.start_run", kwargs={"run_id": run_id}))
    for result in sent:
        wait_for_task(w, result.id)


def test_max_steps_fails_the_run_for_good_with_a_reason_that_names_max_steps(
    worker: Any, database_url: str
) -> None:
    w = worker()
    run_id = client.start_run("looper", "loop")

    run = client.wait(run_id, timeout=30)

    assert run.status == "failed"
    assert run.error is not None and "max_steps" in run.error
    rows = settle(database_url, run_id)
    assert [s["kind"] for s in rows].count("model") == 3  # looper's max_steps
    assert events(database_url, run_id)[-1][1] == "run.failed"
    # Terminal means terminal: the run's tasks delivered again change nothing.
    row, log = run_row(database_url, run_id), events(database_url, run_id)
    _send_everything_again(w, database_url, run_id)
    assert (run_row(database_url, run_id), events(database_url, run_id)) == (row, log)
    assert steps(database_url, run_id) == rows


def test_the_deadline_times_the_run_out_for_good(worker: Any, database_url: str) -> None:
    w = worker()
    run_id = client.start_run("hasty", "nap")

    run = client.wait(run_id, timeout=30)

    assert run.status == "timed_out"
    assert run.error == "passed its deadline"
    rows = settle(database_url, run_id)
    kinds = [kind for _, kind, _ in events(database_url, run_id)]
    assert [k for k in kinds if k in TERMINAL_EVENTS] == ["run.timed_out"]
    # Terminal means terminal: the run's tasks delivered again change nothing.
    row, log = run_row(database_url, run_id), events(database_url, run_id)
    _send_everything_again(w, database_url, run_id)
    assert (run_row(database_url, run_id), events(database_url, run_id)) == (row, log)
    assert steps(database_url, run_id) == rows
    assert client.get_run(run_id).status == "timed_out"


def test_a_run_cancelled_before_its_tool_step_starts_ends_its_log_with_the_terminal_event(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The tool's queue has no worker until after the cancel: its step starts late,
    # as when every tool slot is busy.
    start_worker(worker, monkeypatch, tmp_path, queues="celery,stepwise.model")
    run_id = client.start_run("routed", "go special")
    wait_for_event(database_url, run_id, "model.completed", step=1)
    client.cancel(run_id)
    start_worker(worker, monkeypatch, tmp_path, queues="stepwise.special")

    assert client.wait(run_id, timeout=30).status == "cancelled"
    rows = settle(database_url, run_id)

    assert [s["status"] for s in rows] == ["succeeded", "cancelled", "cancelled"]
    log = events(database_url, run_id)
    followed = [(e["seq"], e["type"], e["step"]) for e in client.follow(run_id, timeout=10)]
    assert log[-1][1] == "run.cancelled", log[-3:]
    assert followed == log


def test_a_tool_still_running_when_its_run_is_cancelled_stores_nothing_after_the_end(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `gate` runs and holds; `special` has no worker until after the cancel, so it
    # starts late (as when every tool slot is busy) and ends the run at its boundary.
    start_worker(worker, monkeypatch, tmp_path, queues="celery,stepwise.model,stepwise.tools")
    run_id = client.start_run("split", "both")
    wait_for_event(database_url, run_id, "tool.started", step=2)
    client.cancel(run_id)
    start_worker(worker, monkeypatch, tmp_path, queues="stepwise.special")
    assert client.wait(run_id, timeout=30).status == "cancelled"

    open_gate(tmp_path, run_id)  # the held tool returns after the end
    settle(database_url, run_id)

    log = events(database_url, run_id)
    followed = [(e["seq"], e["type"], e["step"]) for e in client.follow(run_id, timeout=10)]
    assert log[-1][1] == "run.cancelled", log[-3:]
    assert followed == log
