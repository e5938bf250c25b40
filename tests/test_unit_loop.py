"""The agent loop's decisions, called as plain functions: no Celery, no database."""

from datetime import UTC, datetime, timedelta

import pytest

from providers.types import Message, ModelResponse, TextPart, Thinking, ToolCall, ToolResult
from tasks import loop
from tasks.loop import (
    CallTools,
    Fail,
    Finish,
    Plan,
    boundary_stop,
    decide,
    plan_tools,
    results_message,
)

CALL_A = ToolCall("call_a", "add", '{"a": 1, "b": 2}')
CALL_B = ToolCall("call_b", "nap", '{"seconds": 1}')
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _response(*parts, finish="stop"):
    return ModelResponse(Message("assistant", tuple(parts)), finish)


@pytest.mark.parametrize(
    ("response", "model_calls", "max_steps", "expected"),
    [
        (_response(CALL_A, finish="tool_calls"), 1, 10, CallTools((CALL_A,))),
        (_response(CALL_A, CALL_B, finish="tool_calls"), 9, 10, CallTools((CALL_A, CALL_B))),
        (
            _response(TextPart("let me check"), CALL_A, finish="tool_calls"),
            1,
            2,
            CallTools((CALL_A,)),
        ),
        (_response(CALL_A, finish="length"), 1, 10, CallTools((CALL_A,))),
        (_response(TextPart("42")), 1, 10, Finish("42")),
        (_response(TextPart("4"), TextPart("2")), 3, 3, Finish("42")),
        (_response(Thinking("hmm"), TextPart("done")), 1, 10, Finish("done")),
        (_response(TextPart("")), 1, 10, Finish("")),
        (_response(TextPart("partial answer"), finish="length"), 1, 10, Finish("partial answer")),
    ],
    ids=[
        "tool-call-under-limit",
        "parallel-calls-one-below-limit",
        "text-and-call-under-limit",
        "calls-win-over-length",
        "plain-text-stop",
        "text-parts-joined-at-limit",
        "thinking-ignored",
        "empty-stop",
        "length-with-text",
    ],
)
def test_decide_continues_or_finishes(response, model_calls, max_steps, expected):
    assert decide(response, model_calls=model_calls, max_steps=max_steps) == expected


@pytest.mark.parametrize(
    ("response", "model_calls", "max_steps", "fragments"),
    [
        (_response(CALL_A, finish="tool_calls"), 10, 10, ["max_steps=10", "10 model call"]),
        (_response(CALL_A, CALL_B, finish="tool_calls"), 3, 3, ["max_steps=3"]),
        (_response(CALL_A, finish="tool_calls"), 12, 10, ["max_steps=10"]),
        (_response(CALL_A, finish="tool_calls"), 1, 1, ["max_steps=1"]),
        (_response(TextPart("rude words"), finish="content_filter"), 1, 10, ["content filter"]),
        (_response(finish="content_filter"), 1, 10, ["content filter"]),
        (_response(TextPart("I will not"), finish="refusal"), 1, 10, ["refused", "I will not"]),
        (_response(finish="refusal"), 1, 10, ["refused"]),
        (_response(finish="length"), 1, 10, ["ran out of output tokens"]),
        (_response(Thinking("long thoughts"), finish="length"), 1, 10, ["output tokens"]),
    ],
    ids=[
        "tool-calls-at-max-steps",
        "parallel-calls-at-max-steps",
        "tool-calls-past-max-steps",
        "max-steps-one",
        "content-filter-with-text",
        "content-filter-empty",
        "refusal-with-text",
        "refusal-empty",
        "length-without-text",
        "length-with-only-thinking",
    ],
)
def test_decide_fails_with_a_reason(response, model_calls, max_steps, fragments):
    decision = decide(response, model_calls=model_calls, max_steps=max_steps)
    assert isinstance(decision, Fail)
    for fragment in fragments:
        assert fragment in decision.reason, decision.reason


def test_decide_keeps_the_models_call_order():
    decision = decide(
        _response(CALL_B, TextPart("x"), CALL_A, finish="tool_calls"), model_calls=1, max_steps=5
    )
    assert decision == CallTools((CALL_B, CALL_A))


@pytest.mark.parametrize(
    ("model_step", "calls", "tool_steps", "next_model_step"),
    [
        (1, 1, (2,), 3),
        (1, 2, (2, 3), 4),
        (1, 3, (2, 3, 4), 5),
        (4, 3, (5, 6, 7), 8),
        (8, 1, (9,), 10),
        (10, 5, (11, 12, 13, 14, 15), 16),
        (3, 0, (), 4),
    ],
)
def test_plan_tools_numbers_tool_steps_after_the_model_step(
    model_step, calls, tool_steps, next_model_step
):
    assert plan_tools(model_step, calls) == Plan(tool_steps, next_model_step)


def test_plan_tools_rounds_chain_without_gaps_or_overlaps():
    numbers = [1]
    model_step = 1
    for calls in (2, 1, 3, 1):
        plan = plan_tools(model_step, calls)
        numbers.extend([*plan.tool_steps, plan.next_model_step])
        model_step = plan.next_model_step
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize(
    ("cancel_requested", "deadline", "expected"),
    [
        (True, NOW - timedelta(seconds=1), "cancelled"),
        (True, NOW + timedelta(hours=1), "cancelled"),
        (True, None, "cancelled"),
        (False, NOW, "timed_out"),
        (False, NOW - timedelta(microseconds=1), "timed_out"),
        (False, NOW - timedelta(days=1), "timed_out"),
        (False, NOW + timedelta(microseconds=1), None),
        (False, NOW + timedelta(minutes=5), None),
        (False, None, None),
    ],
    ids=[
        "cancel-beats-passed-deadline",
        "cancel-before-deadline",
        "cancel-without-deadline",
        "deadline-exactly-now",
        "deadline-just-passed",
        "deadline-long-passed",
        "deadline-just-ahead",
        "deadline-ahead",
        "nothing",
    ],
)
def test_boundary_stop(cancel_requested, deadline, expected):
    assert boundary_stop(cancel_requested=cancel_requested, deadline=deadline, now=NOW) == expected


def test_results_message_keeps_the_models_call_order():
    calls = (CALL_B, CALL_A)
    results = {
        "call_a": ToolResult("call_a", "add", "3"),
        "call_b": ToolResult("call_b", "nap", "slept"),
    }
    message = results_message(calls, results)
    assert message.role == "tool"
    assert message.parts == (results["call_b"], results["call_a"])


def test_results_message_fills_a_missing_result_with_an_error():
    calls = (CALL_A, CALL_B)
    message = results_message(calls, {"call_b": ToolResult("call_b", "nap", "slept")})
    missing, present = message.parts
    assert missing == ToolResult("call_a", "add", "the tool did not run", is_error=True)
    assert present == ToolResult("call_b", "nap", "slept")


def test_results_message_keeps_error_results_as_they_are():
    failed = ToolResult("call_a", "add", "RuntimeError: boom", is_error=True)
    message = results_message((CALL_A,), {"call_a": failed})
    assert message.parts == (failed,)


def test_results_message_ignores_results_for_calls_it_was_not_given():
    stray = ToolResult("call_z", "other", "?")
    message = results_message((CALL_A,), {"call_z": stray})
    assert [p.call_id for p in message.parts] == ["call_a"]
    assert message.parts[0].is_error


def test_a_paused_turn_is_sent_back_to_the_model_to_continue():
    paused = ModelResponse(Message.text("assistant", "searching…"), "pause")
    assert loop.decide(paused, model_calls=1, max_steps=5) == loop.Continue()


def test_a_paused_turn_at_max_steps_fails_the_run():
    paused = ModelResponse(Message.text("assistant", "searching…"), "pause")
    decision = loop.decide(paused, model_calls=5, max_steps=5)
    assert isinstance(decision, loop.Fail)
    assert "max_steps" in decision.reason
