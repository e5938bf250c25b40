"""Tool exceptions and malformed tool calls reach the model as tool errors; the run goes on."""

from __future__ import annotations

from typing import Any

from tasks import client
from tests.test_integration_support import events, query


def _tool_messages(database_url: str, run_id: str) -> list[list[dict[str, Any]]]:
    """The parts of each `tool` message the run added to its thread, in order."""
    rows = query(
        database_url,
        "SELECT parts FROM stepwise_messages WHERE run_id = %s AND role = 'tool' ORDER BY position",
        run_id,
    )
    return [parts for (parts,) in rows]


def test_a_tool_that_raises_becomes_a_tool_error_for_the_model_and_the_run_succeeds(
    worker: Any, database_url: str
) -> None:
    worker()
    run_id = client.start_run("faulty", "try it")

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "the tool failed, but I carried on"
    by_number = {s.number: s for s in client.get_steps(run_id)}
    explode, add = by_number[2], by_number[3]
    assert (explode.tool_name, explode.status) == ("explode", "failed")
    assert explode.output == {
        "content": "RuntimeError: exploded: on purpose",
        "is_error": True,
        "invalid": False,  # the call was fine; the tool raised
    }
    assert explode.error == "RuntimeError: exploded: on purpose"
    assert (add.tool_name, add.status, add.output) == (
        "add",
        "succeeded",
        {"content": "2", "is_error": False, "invalid": False},
    )
    log = events(database_url, run_id)
    assert [(kind, step) for _, kind, step in log if kind.startswith("tool.") and step == 2] == [
        ("tool.started", 2),
        ("tool.failed", 2),
    ]
    # The next model step was given the error as the tool's result.
    [results] = _tool_messages(database_url, run_id)
    errors = [(p["content"], p["is_error"]) for p in results]
    assert errors == [("RuntimeError: exploded: on purpose", True), ("2", False)]
    assert by_number[4].kind == "model" and by_number[4].status == "succeeded"


def test_malformed_tool_json_and_an_unknown_tool_go_back_to_the_model_which_corrects_itself(
    worker: Any, database_url: str
) -> None:
    worker()
    run_id = client.start_run("sloppy", "add one and two")

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "fixed it"
    tools = [s for s in client.get_steps(run_id) if s.kind == "tool"]
    bad_json, unknown, fixed = tools
    assert bad_json.status == "failed" and bad_json.output is not None
    assert bad_json.output["is_error"] is True
    assert bad_json.output["content"].startswith(
        "invalid call to add: arguments are not valid JSON"
    )
    assert unknown.status == "failed" and unknown.output is not None
    assert unknown.output == {
        "content": "unknown tool 'subtract'; this agent's tools are: add",
        "is_error": True,
        "invalid": True,
    }
    assert (fixed.tool_name, fixed.status, fixed.arguments) == (
        "add",
        "succeeded",
        '{"a": 1, "b": 2}',
    )
    assert fixed.output == {"content": "3", "is_error": False, "invalid": False}
    # The model saw both errors before it tried again.
    first_round = _tool_messages(database_url, run_id)[0]
    assert [p["is_error"] for p in first_round] == [True, True]
    assert [p["content"] for p in first_round] == [
        bad_json.output["content"],
        unknown.output["content"],
    ]
    # The two calls ran in parallel, so their events may land in either order.
    failed = [step for _, kind, step in events(database_url, run_id) if kind == "tool.failed"]
    assert sorted(failed) == [bad_json.number, unknown.number]


def test_a_model_that_keeps_sending_invalid_tool_calls_fails_the_run_after_max_invalid_turns(
    worker: Any, database_url: str
) -> None:
    worker()
    run_id = client.start_run("stubborn", "add one and two")

    run = client.wait(run_id, timeout=30)

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.startswith(
        "the model asked for an invalid tool call 2 turn(s) in a row (max_invalid_turns=2); "
        "the last: invalid call to add: arguments are not valid JSON"
    )
    kinds = [(s.number, s.kind, s.status) for s in client.get_steps(run_id)]
    # Each bad call went back to the model once; the third model step never called it.
    assert kinds == [
        (1, "model", "succeeded"),
        (2, "tool", "failed"),
        (3, "model", "succeeded"),
        (4, "tool", "failed"),
        (5, "model", "failed"),
    ]
    started = [step for _, kind, step in events(database_url, run_id) if kind == "model.started"]
    assert started == [1, 3]
    assert [p["is_error"] for m in _tool_messages(database_url, run_id) for p in m] == [True, True]
