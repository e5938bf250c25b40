"""The litellm provider's request translation, read as tables: our types -> LiteLLM's messages.

Pure functions only. What LiteLLM makes of these messages, and what comes back, is
tested over real HTTP in tests/test_litellm_provider.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from providers import anthropic as anthropic_adapter
from providers import openai as openai_adapter
from providers.litellm import message_to_wire, to_wire
from providers.types import (
    Message,
    ModelRequest,
    OpaqueItem,
    Part,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    ToolSpec,
)

SIGNED = Thinking("Oslo first.", "EqQBCgIYAhIM1gbcDa9GJwZA2b3h+/==", False, "litellm")
HIDDEN = Thinking("EmwKAhgBEgy3va3pzix", None, True, "litellm")
UNSIGNED = Thinking("Some reasoning a server sent without a signature.", None, False, "litellm")
WEATHER = ToolSpec("weather", "The weather in a city.", {"type": "object", "properties": {}})


def request(*messages: Message, model: str = "openai/gpt-4.1", **settings: Any) -> ModelRequest:
    return ModelRequest(f"litellm:{model}", "", messages, (), settings)


def assistant(*parts: Part) -> Message:
    return Message("assistant", parts)


def call(id: str, arguments: str = '{"city": "Oslo"}') -> dict[str, Any]:
    function = {"name": "weather", "arguments": arguments}
    return {"id": id, "type": "function", "function": function}


MESSAGE_TABLE: list[tuple[str, Message, list[dict[str, Any]]]] = [
    ("user text", Message.text("user", "hi"), [{"role": "user", "content": "hi"}]),
    (
        "system text",
        Message.text("system", "Be brief."),
        [{"role": "system", "content": "Be brief."}],
    ),
    ("empty user", Message("user", ()), []),
    (
        "assistant text",
        assistant(TextPart("Checking.")),
        [{"role": "assistant", "content": "Checking."}],
    ),
    (
        "assistant calls in order, no text",
        assistant(ToolCall("a", "weather", '{"city": "Oslo"}'), ToolCall("b", "weather", "{}")),
        [{"role": "assistant", "content": None, "tool_calls": [call("a"), call("b", "{}")]}],
    ),
    (
        "tool results, one message each, in order",
        Message(
            "tool",
            (
                ToolResult("b", "weather", "fog"),
                ToolResult("a", "weather", "no such city", is_error=True),
            ),
        ),
        [
            {"role": "tool", "tool_call_id": "b", "content": "fog"},
            {"role": "tool", "tool_call_id": "a", "content": "Error: no such city"},
        ],
    ),
    ("thinking alone", assistant(SIGNED), []),
]


@pytest.mark.parametrize(
    ("message", "expected"),
    [(m, e) for _, m, e in MESSAGE_TABLE],
    ids=[name for name, _, _ in MESSAGE_TABLE],
)
def test_messages_translate_to_openai_format(
    message: Message, expected: list[dict[str, Any]]
) -> None:
    assert message_to_wire(message, "openai/gpt-4.1") == expected


def test_tool_results_follow_the_calls_they_answer_and_are_never_merged_into_user_text() -> None:
    history = (
        Message.text("user", "Weather?"),
        assistant(ToolCall("a", "weather", '{"city": "Oslo"}')),
        Message("tool", (ToolResult("a", "weather", "rain"),)),
        Message.text("user", "And tomorrow?"),
    )
    sent = to_wire(request(*history))["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[3] == {"role": "user", "content": "And tomorrow?"}


def test_instructions_lead_as_a_system_message_and_the_prefix_is_stripped() -> None:
    sent = to_wire(ModelRequest("litellm:gemini/gemini-2.5-pro", "Be brief.", ()))
    assert sent == {
        "model": "gemini/gemini-2.5-pro",
        "messages": [{"role": "system", "content": "Be brief."}],
    }


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"a string"', ""])
def test_arguments_that_are_not_a_json_object_go_as_an_empty_object(arguments: str) -> None:
    [sent] = message_to_wire(
        assistant(ToolCall("a", "weather", arguments)), "gemini/gemini-2.5-pro"
    )
    assert sent["tool_calls"][0]["function"]["arguments"] == "{}"


# --- what is carried back, and to whom --------------------------------------------------------

FROM_CLAUDE = assistant(
    SIGNED,
    HIDDEN,
    UNSIGNED,
    TextPart("Checking."),
    ToolCall("toolu_a", "weather", "{}"),
    OpaqueItem("litellm", {"model": "anthropic/claude-sonnet-4-5"}),
)
FROM_GEMINI = assistant(
    ToolCall("call_a", "weather", "{}"),
    ToolCall("call_b", "weather", "{}"),
    OpaqueItem(
        "litellm",
        {
            "model": "gemini/gemini-2.5-pro",
            "tool_signatures": {"call_a": "CiQBjz1rX7Zs3n+Ok0=="},
            "thought_signatures": ["CiQBjz1rX7Zs3n+Ok0=="],
        },
    ),
)


def test_signed_and_redacted_thinking_go_back_verbatim_to_the_same_family() -> None:
    [sent] = message_to_wire(FROM_CLAUDE, "anthropic/claude-opus-4-1")
    assert sent["thinking_blocks"] == [
        {"type": "thinking", "thinking": SIGNED.text, "signature": SIGNED.signature},
        {"type": "redacted_thinking", "data": HIDDEN.text},
    ]  # the unsigned one cannot be verified, so it stays behind
    assert sent["content"] == "Checking."


def test_thought_signatures_go_back_on_their_calls_and_the_message() -> None:
    [sent] = message_to_wire(FROM_GEMINI, "gemini/gemini-3-pro-preview")
    assert sent["tool_calls"][0]["provider_specific_fields"] == {
        "thought_signature": "CiQBjz1rX7Zs3n+Ok0=="
    }
    assert "provider_specific_fields" not in sent["tool_calls"][1]
    assert sent["provider_specific_fields"] == {"thought_signatures": ["CiQBjz1rX7Zs3n+Ok0=="]}


@pytest.mark.parametrize(
    ("message", "model"),
    [
        (FROM_CLAUDE, "openai/gpt-4.1"),
        (FROM_CLAUDE, "gemini/gemini-2.5-pro"),
        (FROM_GEMINI, "anthropic/claude-sonnet-4-5"),
        (FROM_GEMINI, "openai/gpt-4.1"),
    ],
    ids=["claude to openai", "claude to gemini", "gemini to claude", "gemini to openai"],
)
def test_another_family_gets_the_calls_and_text_but_no_thinking_or_signatures(
    message: Message, model: str
) -> None:
    [sent] = message_to_wire(message, model)
    assert set(sent) <= {"role", "content", "tool_calls"}
    assert all(set(c) == {"id", "type", "function"} for c in sent["tool_calls"])


def test_thinking_from_the_anthropic_adapter_is_not_sent_through_litellm() -> None:
    theirs = assistant(Thinking("x", "sig", False, "anthropic"), TextPart("ok"))
    assert message_to_wire(theirs, "anthropic/claude-sonnet-4-5") == [
        {"role": "assistant", "content": "ok"}
    ]


def test_litellm_thinking_and_items_never_reach_the_other_adapters() -> None:
    history = (Message.text("user", "Weather?"), FROM_CLAUDE)
    to_claude = anthropic_adapter.messages_to_wire(history)
    assert [b["type"] for b in to_claude[1]["content"]] == ["text", "tool_use"]
    to_openai = openai_adapter.message_to_wire(FROM_GEMINI)
    assert set(to_openai[0]) == {"role", "content", "tool_calls"}


# --- settings ---------------------------------------------------------------------------------

SETTINGS_TABLE: list[tuple[str, Any]] = [
    ("temperature", 0.2),
    ("top_p", 0.9),
    ("max_tokens", 256),
    ("max_completion_tokens", 512),
    ("reasoning_effort", "low"),
    ("response_format", {"type": "json_object"}),
    ("seed", 7),
    ("stop", ["END"]),
    ("drop_params", True),
    ("tool_choice", "required"),
    ("parallel_tool_calls", False),
]


@pytest.mark.parametrize(("key", "value"), SETTINGS_TABLE, ids=[k for k, _ in SETTINGS_TABLE])
def test_request_settings_pass_through_unchanged(key: str, value: Any) -> None:
    sent = to_wire(ModelRequest("litellm:openai/gpt-4.1", "", (), (WEATHER,), {key: value}))
    assert sent[key] == value


def test_tool_options_are_left_out_without_tools_and_client_settings_are_never_sent() -> None:
    settings: dict[str, Any] = {
        "tool_choice": "required",
        "parallel_tool_calls": True,
        "base_url": "http://127.0.0.1:9",
        "api_key_env": "SOME_KEY",
        "timeout": 5,
        "temperature": None,
    }
    assert sorted(to_wire(request(**settings))) == ["messages", "model"]


def test_a_thinking_budget_turns_thinking_on_and_a_raw_thinking_object_passes_through() -> None:
    assert to_wire(request(thinking_budget=2048))["thinking"] == {
        "type": "enabled",
        "budget_tokens": 2048,
    }
    raw = {"type": "enabled", "budget_tokens": 1024}
    assert to_wire(request(thinking=raw))["thinking"] == raw
