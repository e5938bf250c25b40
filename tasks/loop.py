"""The agent loop's decisions, as plain functions: no Celery, no database.

The step tasks ask these what comes next; tests call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from providers.types import Message, ModelResponse, ToolCall, ToolResult


@dataclass(frozen=True)
class Finish:
    """The model gave its final answer."""

    answer: str


@dataclass(frozen=True)
class CallTools:
    """The model asked for these tool calls; run them, then call the model again."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class Continue:
    """The model paused mid-turn (Anthropic's pause_turn): send its reply back as is."""


@dataclass(frozen=True)
class Fail:
    """The run cannot go on."""

    reason: str


Decision = Finish | CallTools | Continue | Fail


def decide(response: ModelResponse, *, model_calls: int, max_steps: int) -> Decision:
    """What follows a model response, given how many model calls the run has made."""
    calls = response.message.tool_calls
    text = response.message.joined_text
    if calls:
        if model_calls >= max_steps:
            return Fail(
                f"max_steps reached: the model still asked for tools after "
                f"{model_calls} model call(s) (max_steps={max_steps})"
            )
        return CallTools(calls)
    if response.finish_reason == "pause":
        if model_calls >= max_steps:
            return Fail(f"max_steps reached: the model paused after {model_calls} model call(s)")
        return Continue()
    if response.finish_reason == "content_filter":
        return Fail("the provider's content filter stopped the model's reply")
    if response.finish_reason == "refusal":
        return Fail(f"the model refused: {text}" if text else "the model refused")
    if response.finish_reason == "length" and not text:
        return Fail("the model ran out of output tokens before it answered")
    return Finish(text)


@dataclass(frozen=True)
class Plan:
    """Step numbers for a tool round: the tool steps, then the next model step."""

    tool_steps: tuple[int, ...]
    next_model_step: int


def plan_tools(model_step: int, calls: int) -> Plan:
    """Tool calls of model step n become steps n+1…n+k; the model goes again at n+k+1."""
    return Plan(tuple(range(model_step + 1, model_step + calls + 1)), model_step + calls + 1)


def boundary_stop(
    *, cancel_requested: bool, deadline: datetime | None, now: datetime
) -> str | None:
    """The terminal status a run takes at a step boundary, if it must stop there."""
    if cancel_requested:
        return "cancelled"
    if deadline is not None and now >= deadline:
        return "timed_out"
    return None


def results_message(calls: tuple[ToolCall, ...], results: dict[str, ToolResult]) -> Message:
    """One `tool` message with a result for every call, in the model's order.

    A call with no recorded result (its step was skipped) is reported as an error
    rather than left out: providers reject a tool call without a result.
    """
    parts = tuple(
        results.get(c.id) or ToolResult(c.id, c.name, "the tool did not run", is_error=True)
        for c in calls
    )
    return Message("tool", parts)


def invalid_streak(rounds: list[list[bool]]) -> int:
    """How many tool rounds in a row, counting back from the latest, held an invalid call.

    Each round lists, per tool call, whether the call was invalid (malformed JSON,
    arguments that fail the schema, an unknown tool). Rounds without tool calls do
    not break a streak: a paused turn is not a correction.
    """
    streak = 0
    for calls in reversed(rounds):
        if not calls:
            continue
        if not any(calls):
            break
        streak += 1
    return streak
