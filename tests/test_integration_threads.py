"""Threads carry a conversation across runs; an idempotency key starts one run only."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks import InvalidInput, client
from tests.test_integration_support import open_gate, query, start_worker, wait_for_event


def _messages(database_url: str, thread: str) -> list[tuple[int, str, str]]:
    """The thread's history as (position, run id, role), in order."""
    rows = query(
        database_url,
        "SELECT position, run_id, role FROM stepwise_messages WHERE thread_id = %s "
        "ORDER BY position",
        thread,
    )
    return [(position, run_id, role) for position, run_id, role in rows]


def _first_prompt_tokens(run_id: str) -> int:
    """Input tokens of the run's first model call: the scripted model counts the whole history."""
    first = client.get_steps(run_id)[0]
    assert first.kind == "model" and first.usage is not None
    return first.usage.input_tokens


def test_a_second_run_on_a_thread_continues_the_first_runs_conversation(
    worker: Any, database_url: str
) -> None:
    worker()
    thread = f"thread-{uuid.uuid4()}"
    first = client.start_run("parallel", "add things", thread=thread)
    assert client.wait(first, timeout=30).status == "succeeded"
    history = _messages(database_url, thread)

    second = client.start_run("parallel", "add things", thread=thread)
    run = client.wait(second, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.thread == thread == client.get_run(first).thread
    messages = _messages(database_url, thread)
    assert [p for p, _, _ in messages] == list(range(1, len(messages) + 1))
    assert messages[: len(history)] == history  # the earlier conversation is kept as it was
    roles = ["user", "assistant", "tool", "assistant"]
    assert [(r, role) for _, r, role in messages] == [(first, role) for role in roles] + [
        (second, role) for role in roles
    ]
    # Same input, longer prompt: the second run's model saw the first run's messages.
    assert _first_prompt_tokens(second) > _first_prompt_tokens(first)


def test_a_thread_with_a_run_in_progress_refuses_a_second_run(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    start_worker(worker, monkeypatch, tmp_path)
    thread = f"thread-{uuid.uuid4()}"
    first = client.start_run("gated", "hold on", thread=thread)
    wait_for_event(database_url, first, "tool.started", step=2)

    with pytest.raises(InvalidInput, match="has a run in progress"):
        client.start_run("parallel", "me too", thread=thread)

    open_gate(tmp_path, first)
    assert client.wait(first, timeout=30).status == "succeeded"
    runs = query(database_url, "SELECT id FROM stepwise_runs WHERE thread_id = %s", thread)
    assert runs == [(first,)]


def test_two_starts_with_one_idempotency_key_return_one_run(worker: Any, database_url: str) -> None:
    worker()
    key = f"key-{uuid.uuid4()}"

    first = client.start_run("parallel", "add things", idempotency_key=key)
    again = client.start_run("parallel", "add things", idempotency_key=key)

    assert again == first
    rows = query(database_url, "SELECT id FROM stepwise_runs WHERE idempotency_key = %s", key)
    assert rows == [(first,)]
    assert client.wait(first, timeout=30).status == "succeeded"
    # Asking once more after the end still names the same run and starts nothing.
    assert client.start_run("parallel", "add things", idempotency_key=key) == first
    starts = query(
        database_url,
        "SELECT count(*) FROM stepwise_events WHERE run_id = %s AND type = 'run.started'",
        first,
    )
    assert starts == [(1,)]
