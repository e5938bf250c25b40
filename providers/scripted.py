"""An offline, deterministic stand-in model: no network, no key, same answer every time.

`scripted:demo` follows rules over the demo tools: each arithmetic expression in
the user's message becomes a parallel `calculate` call, a question about the
time becomes a `current_time` call, and once the results are in it answers with
them. Any other `scripted:NAME` replays the agent's `model_settings["script"]`:
a list of turns, each `{"text": ...}` or `{"tool_calls": [{"name", "arguments"}]}`,
picked by how many assistant turns followed the latest user message (so a
redelivered step gets the same turn), with an optional `"delay"` in seconds and
`"repeat_last": true` to keep replaying the last turn.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from providers.errors import Fatal
from providers.types import (
    Delta,
    FinishReason,
    Message,
    ModelRequest,
    ModelResponse,
    OnDelta,
    Part,
    TextPart,
    ToolCall,
    ToolResult,
    Usage,
)

STAND_IN_NOTICE = "scripted model: an offline stand-in, not a real LLM"

_SPAN = re.compile(r"[\d(][\d\s.+\-*/()]*[\d)]")
_HAS_OPERATOR = re.compile(r"[\d)]\s*(?:\*\*|[-+*/])\s*[\d(]")
_ABOUT_TIME = re.compile(r"\b(time|clock|date)\b", re.IGNORECASE)


class ScriptedProvider:
    """The `scripted:` provider."""

    name = "scripted"

    def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """Answer from the rules (`scripted:demo`) or from the agent's script."""
        _, _, script_name = request.model.partition(":")
        turn = _turn_index(request.messages)
        if script_name == "demo":
            message = _demo_turn(request.messages, turn)
        else:
            message = _script_turn(request, script_name, turn)
        delay = float(request.settings.get("delay", 0))
        if delay > 0:
            time.sleep(delay)
        if on_delta is not None:
            for word in re.findall(r"\S*\s*", message.joined_text):
                if word:
                    on_delta(Delta("text", word))
        finish: FinishReason = "tool_calls" if message.tool_calls else "stop"
        return ModelResponse(message, finish, _usage(request, message), request.model)


def _turn_index(messages: tuple[Message, ...]) -> int:
    """How many assistant turns came after the latest user message."""
    turn = 0
    for message in reversed(messages):
        if message.role == "user":
            break
        if message.role == "assistant":
            turn += 1
    return turn


def _latest_user_text(messages: tuple[Message, ...]) -> str:
    return next((m.joined_text for m in reversed(messages) if m.role == "user"), "")


def _results_since_user(messages: tuple[Message, ...]) -> list[ToolResult]:
    results: list[ToolResult] = []
    for message in reversed(messages):
        if message.role == "user":
            break
        results[:0] = [p for p in message.parts if isinstance(p, ToolResult)]
    return results


def _demo_turn(messages: tuple[Message, ...], turn: int) -> Message:
    question = _latest_user_text(messages)
    if turn == 0:
        # Ids unique within the thread, as a real provider's are: `call_<message>_<index>`.
        calls: list[Part] = [
            ToolCall(
                f"call_{len(messages)}_{i}", "calculate", json.dumps({"expression": e.strip()})
            )
            for i, e in enumerate(_expressions(question))
        ]
        if _ABOUT_TIME.search(question):
            calls.append(ToolCall(f"call_{len(messages)}_{len(calls)}", "current_time", "{}"))
        if calls:
            return Message("assistant", tuple(calls))
        return Message.text(
            "assistant",
            "I am the scripted stand-in model: ask me some arithmetic (say, 'What is 17 * 23?') "
            "or the time, and I will use the demo tools. Set OPENAI_API_KEY or "
            "ANTHROPIC_API_KEY to talk to a real model.",
        )
    lines = []
    for result in _results_since_user(messages):
        if result.is_error:
            lines.append(f"The {result.name} tool failed: {result.content}")
        elif result.name == "calculate":
            lines.append(f"{_expression_of(messages, result.call_id)} = {result.content}")
        else:
            lines.append(f"{result.name}: {result.content}")
    return Message.text("assistant", "\n".join(lines) or "I have nothing to report.")


def _expressions(text: str) -> list[str]:
    """Arithmetic in `text`, with any parenthesis that is not closed trimmed away."""
    found = []
    for span in _SPAN.findall(text):
        expression = span.strip()
        while expression.count("(") > expression.count(")") and expression.startswith("("):
            expression = expression[1:].lstrip()
        while expression.count(")") > expression.count("(") and expression.endswith(")"):
            expression = expression[:-1].rstrip()
        if _HAS_OPERATOR.search(expression):
            found.append(expression)
    return found


def _expression_of(messages: tuple[Message, ...], call_id: str) -> str:
    for message in reversed(messages):
        for call in message.tool_calls:
            if call.id == call_id:
                return str(json.loads(call.arguments).get("expression", "?"))
    return "?"


def _script_turn(request: ModelRequest, name: str, turn: int) -> Message:
    script: Any = request.settings.get("script")
    if not isinstance(script, list) or not script:
        raise Fatal(
            f"scripted:{name} needs model_settings['script'], a list of turns", "scripted", name
        )
    if turn >= len(script):
        if not request.settings.get("repeat_last"):
            raise Fatal(f"scripted:{name} ran out of script at turn {turn + 1}", "scripted", name)
        turn = len(script) - 1
    entry = script[turn]
    if not isinstance(entry, dict):
        raise Fatal(f"scripted:{name}: turn {turn + 1} must be an object", "scripted", name)
    parts: list[Part] = []
    if entry.get("text"):
        parts.append(TextPart(str(entry["text"])))
    for i, call in enumerate(entry.get("tool_calls", [])):
        arguments = call.get("arguments", {})
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        parts.append(
            ToolCall(call.get("id", f"call_{len(request.messages)}_{i}"), call["name"], raw)
        )
    return Message("assistant", tuple(parts))


def _usage(request: ModelRequest, reply: Message) -> Usage:
    """Rough, deterministic token counts (four characters a token)."""
    prompt = len(request.instructions) + sum(len(repr(m.parts)) for m in request.messages)
    return Usage(input_tokens=prompt // 4 + 1, output_tokens=len(repr(reply.parts)) // 4 + 1)
