"""Tool effects at most once, honestly: effect ids, outcome_unknown, and tool timeouts.

A worker is SIGKILLed while a tool runs. Redis hands the unacknowledged message to
the next worker after the (shortened) visibility timeout, and the step finds its
own record: running, with an effect id, and no outcome.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tasks import client
from tests.test_integration_support import (
    effects,
    events,
    open_gate,
    query,
    settle,
    start_worker,
    tallies,
    wait_for_event,
    wait_until,
)

# A short visibility timeout, so Redis hands the unacknowledged message on soon.
SHORT = {"STEPWISE_VISIBILITY_TIMEOUT": "2", "STEPWISE_TIMING_CHECK": "warn"}


def _die_mid_tool(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, agent: str
) -> tuple[str, str]:
    """Start a run, SIGKILL its worker while step 2's tool runs, start another worker.

    Returns the run id and the effect id the tool step committed before it ran.
    """
    doomed = start_worker(worker, monkeypatch, tmp_path, extra_env=SHORT)
    run_id = client.start_run(agent, "go through")
    wait_for_event(database_url, run_id, "tool.started", step=2)
    [(effect_id,)] = query(
        database_url,
        "SELECT effect_id FROM stepwise_steps WHERE run_id = %s AND number = 2",
        run_id,
    )
    doomed.kill()  # mid-tool, as in a crash
    time.sleep(2.5)  # past the visibility timeout: the next worker restores the message
    start_worker(worker, monkeypatch, tmp_path, extra_env=SHORT)
    return run_id, effect_id


def _tool_events(database_url: str, run_id: str) -> list[str]:
    return [k for _, k, n in events(database_url, run_id) if n == 2]


def test_a_tool_whose_worker_dies_mid_call_ends_as_outcome_unknown_and_is_not_run_again(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_id, effect_id = _die_mid_tool(worker, database_url, monkeypatch, tmp_path, "gated")
    # The gate never opens: a second run of the tool would wait, then raise.

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error  # the model was told, and went on
    [step] = [s for s in client.get_steps(run_id) if s.number == 2]
    assert step.status == "failed"
    assert step.output is not None and step.output["outcome_unknown"] is True
    assert step.output["content"].startswith("outcome unknown: the worker running gate stopped")
    assert effect_id in step.output["content"]
    assert _tool_events(database_url, run_id) == ["tool.started", "tool.outcome_unknown"]
    [(data,)] = query(
        database_url,
        "SELECT data FROM stepwise_events WHERE run_id = %s AND type = 'tool.outcome_unknown'",
        run_id,
    )
    assert data == {"call_id": "call_1_0", "name": "gate", "effect_id": effect_id}
    [(parts,)] = query(
        database_url,
        "SELECT parts FROM stepwise_messages WHERE run_id = %s AND role = 'tool' "
        "ORDER BY position LIMIT 1",
        run_id,
    )
    assert parts[0]["is_error"] is True
    assert parts[0]["content"] == step.output["content"]  # what the model read


def test_an_idempotent_tool_whose_worker_dies_runs_again_with_the_same_effect_id(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_id, effect_id = _die_mid_tool(worker, database_url, monkeypatch, tmp_path, "gated_safely")
    open_gate(tmp_path, run_id)

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "through the safe gate"
    assert effects(tmp_path, run_id) == [(effect_id, 1), (effect_id, 2)]
    [step] = [s for s in settle(database_url, run_id) if s["number"] == 2]
    assert (step["status"], step["attempts"]) == ("succeeded", 2)
    assert _tool_events(database_url, run_id) == [
        "tool.started",
        "tool.started",
        "tool.completed",
    ]


def test_with_on_unknown_outcome_fail_a_tool_whose_worker_dies_fails_the_run(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_id, effect_id = _die_mid_tool(worker, database_url, monkeypatch, tmp_path, "gated_strictly")

    run = client.wait(run_id, timeout=30)

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.startswith("tool step 2: outcome unknown: the worker running gate stopped")
    assert effect_id in run.error
    assert [k for _, k, _ in events(database_url, run_id)][-2:] == [
        "tool.outcome_unknown",
        "run.failed",
    ]
    # The chain still delivers model step 3, which finds the run ended and skips itself.
    ended = ["succeeded", "failed", "cancelled"]
    wait_until(
        "model step 3 to be skipped", lambda: [s.status for s in client.get_steps(run_id)] == ended
    )
    assert [k for _, k, _ in events(database_url, run_id)][-1] == "run.failed"


@pytest.mark.parametrize("pool", ["threads", "prefork", "solo", "gevent"])
def test_a_tool_that_overruns_its_timeout_is_abandoned_and_the_model_is_told_under_any_pool(
    pool: str, worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    start_worker(worker, monkeypatch, tmp_path, pool=pool, concurrency=2)
    run_id = client.start_run("dawdling", "take your time")

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "moved on"
    [step] = [s for s in client.get_steps(run_id) if s.number == 2]
    assert step.status == "failed"
    assert step.output is not None
    assert step.output["timed_out"] is True
    assert step.output["content"] == (
        "dawdle did not finish within 1 s and was abandoned; "
        "it may still finish, and its effects may still happen"
    )
    assert tallies(tmp_path, run_id) == []  # the run ended while the tool still waited
    # The abandoned call finishes later; its result is dropped, the record stays.
    open_gate(tmp_path, run_id)
    wait_until("the abandoned call to finish", lambda: tallies(tmp_path, run_id))
    [again] = [s for s in client.get_steps(run_id) if s.number == 2]
    assert again.output == step.output
    assert [k for _, k, n in events(database_url, run_id) if n == 2] == [
        "tool.started",
        "tool.failed",
    ]
