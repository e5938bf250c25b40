"""The anthropic provider's pure translation, read as tables: our types <-> Messages API JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.anthropic import (
    StreamAssembler,
    classify_status,
    from_wire,
    retry_after,
    to_wire,
    usage_from_wire,
)
from providers.errors import ContextLengthExceeded, Fatal, ProviderError, Retryable
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    OpaqueItem,
    Part,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from tests.fake_anthropic import (
    message,
    redacted_thinking,
    stream_events,
    text,
    thinking,
    tool_use,
    usage,
)

SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+signed=="
WEATHER = ToolSpec(
    "weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def request(*messages: Message, instructions: str = "", **settings: Any) -> ModelRequest:
    return ModelRequest(
        "anthropic:claude-fake", instructions, messages, tools=(), settings=dict(settings)
    )


def user(value: str) -> Message:
    return Message.text("user", value)


def assistant(*parts: Part) -> Message:
    return Message("assistant", parts)


# --- requests ---------------------------------------------------------------------------------


def test_the_model_prefix_is_stripped_and_max_tokens_defaults_to_4096() -> None:
    assert to_wire(request(user("hi"))) == {
        "model": "claude-fake",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_tool_results_become_tool_result_blocks_inside_one_user_message() -> None:
    calls = (ToolCall("toolu_1", "weather", '{"city": "Oslo"}'), ToolCall("toolu_2", "x", "{}"))
    results = Message(
        "tool",
        (
            ToolResult("toolu_1", "weather", "rain"),
            ToolResult("toolu_2", "x", "ValueError: no such tool", is_error=True),
        ),
    )
    wire = to_wire(request(user("weather?"), assistant(*calls), results))["messages"]
    assert wire[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": "ValueError: no such tool",
                "is_error": True,
            },
        ],
    }


@pytest.mark.parametrize(
    ("arguments", "sent"),
    [
        ('{"city": "Oslo", "days": [1, 2]}', {"city": "Oslo", "days": [1, 2]}),
        ("{}", {}),
        ("", {}),
        ('{"city": "Os', {}),  # junk from the model: the API needs an object
        ("[1, 2]", {}),  # valid JSON, but not an object
    ],
)
def test_tool_use_input_is_the_json_object_parsed_from_the_arguments(
    arguments: str, sent: dict[str, Any]
) -> None:
    call = ToolCall("toolu_1", "weather", arguments)
    wire = to_wire(request(user("hi"), assistant(TextPart("let me look"), call)))["messages"]
    assert wire[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "let me look"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": sent},
        ],
    }
    assert call.arguments == arguments  # our record keeps what the model sent


def test_instructions_and_every_system_message_are_joined_into_system() -> None:
    wire = to_wire(
        request(
            Message.text("system", "Be brief."),
            user("hi"),
            Message.text("system", "Answer in French."),
            instructions="You are a forecaster.",
        )
    )
    assert wire["system"] == "You are a forecaster.\n\nBe brief.\n\nAnswer in French."
    assert [m["role"] for m in wire["messages"]] == ["user"]


def test_consecutive_same_role_messages_are_merged_with_tool_results_first() -> None:
    call = ToolCall("toolu_1", "weather", "{}")
    wire = to_wire(
        request(
            user("one"),
            user("two"),
            assistant(TextPart("a")),
            assistant(call),
            Message("tool", (ToolResult("toolu_1", "weather", "sun"),)),
            user("thanks"),
        )
    )["messages"]
    assert wire == [
        {"role": "user", "content": [text("one"), text("two")]},
        {
            "role": "assistant",
            "content": [
                text("a"),
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sun"},
                text("thanks"),
            ],
        },
    ]


def test_thinking_with_signature_and_redacted_thinking_round_trip_verbatim() -> None:
    blocks = [
        thinking("Oslo is rainy in autumn.", SIGNATURE),
        redacted_thinking("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"),
        tool_use("weather", {"city": "Oslo"}, id="toolu_9"),
    ]
    response = from_wire(message(*blocks))
    assert response.message.parts[:2] == (
        Thinking("Oslo is rainy in autumn.", SIGNATURE, False, "anthropic"),
        Thinking(blocks[1]["data"], None, True, "anthropic"),
    )
    results = Message("tool", (ToolResult("toolu_9", "weather", "rain"),))
    wire = to_wire(request(user("weather?"), response.message, results))
    assert wire["messages"][1]["content"] == blocks


def test_another_providers_thinking_and_opaque_items_are_dropped() -> None:
    foreign = assistant(
        Thinking("summary", "sig", provider="openai"),
        OpaqueItem("openai", {"type": "reasoning", "encrypted_content": "gAAA"}),
        Thinking("no signature", None, provider="anthropic"),  # unverifiable: dropped too
        TextPart("hello"),
    )
    wire = to_wire(request(user("hi"), foreign))
    assert wire["messages"][1] == {"role": "assistant", "content": [text("hello")]}


def test_unknown_content_blocks_round_trip_as_opaque_items() -> None:
    server_tool = {
        "type": "server_tool_use",
        "id": "srvtoolu_1",
        "name": "web_search",
        "input": {"query": "oslo weather"},
    }
    response = from_wire(message(server_tool, text("It rains.")))
    assert response.message.parts[0] == OpaqueItem("anthropic", server_tool)
    wire = to_wire(request(user("hi"), response.message))
    assert wire["messages"][1]["content"] == [server_tool, text("It rains.")]


def test_an_assistant_turn_with_nothing_anthropic_can_read_is_left_out() -> None:
    wire = to_wire(request(user("a"), assistant(OpaqueItem("openai", {"x": 1})), user("b")))
    assert wire["messages"] == [{"role": "user", "content": [text("a"), text("b")]}]


def test_cache_places_cache_control_on_the_system_block_and_the_last_tool() -> None:
    other = ToolSpec("clock", "The time.", {"type": "object", "properties": {}})
    base = request(user("hi"), instructions="Forecast.", cache=True)
    wire = to_wire(
        ModelRequest(base.model, base.instructions, base.messages, (WEATHER, other), base.settings)
    )
    assert wire["system"] == [
        {"type": "text", "text": "Forecast.", "cache_control": {"type": "ephemeral"}}
    ]
    assert wire["tools"] == [
        {"name": "weather", "description": WEATHER.description, "input_schema": WEATHER.parameters},
        {
            "name": "clock",
            "description": "The time.",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": {"type": "ephemeral"},
        },
    ]


def test_without_cache_nothing_carries_cache_control() -> None:
    base = request(user("hi"), instructions="Forecast.")
    wire = to_wire(ModelRequest(base.model, base.instructions, base.messages, (WEATHER,)))
    assert wire["system"] == "Forecast."
    assert "cache_control" not in json.dumps(wire)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"max_tokens": 512}, {"max_tokens": 512}),
        (
            {"thinking_budget": 2048},
            {"max_tokens": 6144, "thinking": {"type": "enabled", "budget_tokens": 2048}},
        ),
        (
            {"thinking_budget": 2048, "max_tokens": 3000},
            {"max_tokens": 3000, "thinking": {"type": "enabled", "budget_tokens": 2048}},
        ),
        ({"thinking": {"type": "adaptive"}}, {"thinking": {"type": "adaptive"}}),
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
        ({"stop_sequences": ["END"]}, {"stop_sequences": ["END"]}),
        ({"tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
        ({"tool_choice": "any"}, {"tool_choice": {"type": "any"}}),
        ({"tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
        ({"tool_choice": "weather"}, {"tool_choice": {"type": "tool", "name": "weather"}}),
        (
            {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
            {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
        ),
        ({"api_key_env": "K", "base_url": "http://x", "timeout": 5, "script": []}, {}),
    ],
)
def test_model_settings_reach_the_wire(settings: dict[str, Any], expected: dict[str, Any]) -> None:
    base = request(user("hi"), **settings)
    wire = to_wire(ModelRequest(base.model, "", base.messages, (WEATHER,), base.settings))
    extra = {k: v for k, v in wire.items() if k not in ("model", "messages", "tools")}
    assert extra == {"max_tokens": 4096, **expected}


# --- responses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "refusal"),
        ("pause_turn", "pause"),
    ],
)
def test_stop_reason_becomes_our_finish_reason(stop_reason: str, finish: str) -> None:
    assert from_wire(message(text("x"), stop_reason=stop_reason)).finish_reason == finish


def test_a_response_keeps_block_order_and_the_tool_input_as_json_text() -> None:
    response = from_wire(
        message(
            text("Checking both."),
            tool_use("weather", {"city": "Oslo"}, id="toolu_a"),
            tool_use("weather", {"city": "Bergen"}, id="toolu_b"),
            model="claude-fake-20260101",
        )
    )
    assert response.message == assistant(
        TextPart("Checking both."),
        ToolCall("toolu_a", "weather", '{"city": "Oslo"}'),
        ToolCall("toolu_b", "weather", '{"city": "Bergen"}'),
    )
    assert response.finish_reason == "tool_calls"
    assert response.model == "anthropic:claude-fake-20260101"


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        (usage(12, 3), Usage(12, 3)),
        (usage(12, 3, cache_read=100, cache_write=40), Usage(152, 3, 100, 40)),
        (usage(12, 300, thinking_tokens=250), Usage(12, 300, reasoning_tokens=250)),
        ({"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": None}, Usage(5, 1)),
        (None, Usage()),
    ],
)
def test_usage_counts_cache_reads_and_writes_as_input_too(
    wire: dict[str, Any] | None, ours: Usage
) -> None:
    assert usage_from_wire(wire) == ours


# --- streams ----------------------------------------------------------------------------------


def test_the_stream_assembler_rebuilds_the_message_and_reports_fragments() -> None:
    full = message(
        thinking("First Oslo, then Bergen.", SIGNATURE),
        text("Checking."),
        tool_use("weather", {"city": "Oslo"}, id="toolu_a"),
        tool_use("weather", {"city": "Bergen", "unit": "celsius"}, id="toolu_b"),
        usage_=usage(20, 70, cache_read=8, cache_write=4, thinking_tokens=30),
    )
    deltas: list[Delta] = []
    assembler = StreamAssembler(deltas.append)
    for _, event in stream_events(full, chunk=5):
        assembler.add(event)
    response = assembler.response()
    assert response == from_wire(full)
    fragments = [d.text for d in deltas if d.kind == "tool_arguments" and d.index == 3]
    assert len(fragments) > 1
    assert "".join(fragments) == '{"city": "Bergen", "unit": "celsius"}'
    assert "".join(d.text for d in deltas if d.kind == "thinking") == "First Oslo, then Bergen."
    assert [d.text for d in deltas if d.kind == "text"] == ["Check", "ing."]


def test_streamed_tool_arguments_are_kept_raw_even_when_they_do_not_parse() -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message(), "usage": usage(3, 1)}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '"Oslo"'},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    assembler = StreamAssembler()
    for event in events:
        assembler.add(event)
    response = assembler.response()
    assert response.message.tool_calls == (ToolCall("toolu_1", "weather", '{"city": "Oslo"'),)
    assert response.usage == Usage(3, 9)


def test_a_tool_call_without_input_fragments_gets_an_empty_object() -> None:
    assembler = StreamAssembler()
    for _, event in stream_events(message(tool_use("clock", {}, id="toolu_c"))):
        assembler.add(event)
    assert assembler.response().message.tool_calls == (ToolCall("toolu_c", "clock", "{}"),)


def test_a_stream_that_ends_before_message_stop_is_retryable() -> None:
    assembler = StreamAssembler()
    for _, event in stream_events(message(text("cut short")))[:-2]:
        assembler.add(event)
    with pytest.raises(Retryable, match="before message_stop"):
        assembler.response()


# --- errors -----------------------------------------------------------------------------------


def body(kind: str, text_: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": text_}
    if code:
        error["details"] = {"error_code": code}
    return {"type": "error", "error": error, "request_id": "req_1"}


@pytest.mark.parametrize(
    ("status", "error", "headers", "expected", "after"),
    [
        (429, body("rate_limit_error", "slow down"), {"retry-after": "7"}, Retryable, 7.0),
        (429, body("rate_limit_error", "ramp", "ramp_limit_exceeded"), {}, Retryable, None),
        (429, body("rate_limit_error", "cap", "enforced_spend_limit_reached"), {}, Fatal, None),
        (429, body("rate_limit_error", "cap", "contract_spend_limit_reached"), {}, Fatal, None),
        (408, body("timeout_error", "slow"), {}, Retryable, None),
        (409, body("conflict_error", "busy"), {}, Retryable, None),
        (500, body("api_error", "oops"), {"retry-after-ms": "250"}, Retryable, 0.25),
        (503, "upstream connect error", {}, Retryable, None),
        (529, body("overloaded_error", "Overloaded"), {}, Retryable, None),
        (529, body("overloaded_error", "Overloaded"), {"x-should-retry": "false"}, Fatal, None),
        (400, body("invalid_request_error", "odd"), {"x-should-retry": "true"}, Retryable, None),
        (400, body("invalid_request_error", "max_tokens: Field required"), {}, Fatal, None),
        (
            400,
            body("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
            {},
            ContextLengthExceeded,
            None,
        ),
        (
            400,
            body("invalid_request_error", "input length and `max_tokens` exceed context limit"),
            {},
            ContextLengthExceeded,
            None,
        ),
        (401, body("authentication_error", "invalid x-api-key"), {}, Fatal, None),
        (403, body("permission_error", "no access"), {}, Fatal, None),
        (404, body("not_found_error", "model: claude-nope"), {}, Fatal, None),
        (413, body("request_too_large", "Request exceeds the maximum size"), {}, Fatal, None),
        (422, body("invalid_request_error", "unprocessable"), {}, Fatal, None),
        # An `error` event inside a 200 stream: classified by its type.
        (200, body("overloaded_error", "Overloaded"), {}, Retryable, None),
        (200, body("api_error", "Internal server error"), {}, Retryable, None),
        (200, body("invalid_request_error", "bad"), {}, Fatal, None),
    ],
)
def test_errors_are_classified_once(
    status: int,
    error: object,
    headers: dict[str, str],
    expected: type[ProviderError],
    after: float | None,
) -> None:
    result = classify_status(status, error, headers, "claude-fake")
    assert type(result) is expected
    assert result.provider == "anthropic"
    assert result.model == "claude-fake"
    assert "'claude-fake'" in str(result)
    if isinstance(error, dict):
        assert error["error"]["message"] in str(result)
    if isinstance(result, Retryable):
        assert result.retry_after == after


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Sun, 01 Nov 2026 00:00:30 GMT"}, 30.0),
        ({"retry-after": "yesterday"}, None),
        ({}, None),
    ],
)
def test_retry_after_comes_from_the_servers_headers(
    headers: dict[str, str], seconds: float | None
) -> None:
    now = 1793491200.0  # Sun, 01 Nov 2026 00:00:00 GMT
    assert retry_after(headers, now=now) == seconds
