"""The Responses provider's pure translation, read as tables: our types <-> Responses JSON.

Wire objects on the way in are built as the API reference shows them
(tests/fake_openai_responses.py): as plain JSON, and once through the SDK's own
models, never mocked.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from providers.errors import ContextLengthExceeded, Fatal, Retryable
from providers.openai_responses import StreamAssembler, from_wire, to_wire, usage_from_wire
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    OpaqueItem,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from tests import fake_openai_responses as wire

ADD = ToolSpec(
    "add",
    "Add two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
REASONING = wire.reasoning("rs_1", summary="Two sums: two calls.")


def request(*messages: Message, **kw: Any) -> ModelRequest:
    return ModelRequest(
        model=kw.pop("model", "openai-responses:gpt-5-mini"),
        instructions=kw.pop("instructions", ""),
        messages=messages,
        **kw,
    )


def user(text: str) -> Message:
    return Message.text("user", text)


def said(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "output_text", "text": text}]}


def asked(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "input_text", "text": text}]}


def call(call_id: str, arguments: str = "{}") -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "add", "arguments": arguments}


def output(call_id: str, text: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": text}


# --- to_wire: messages ------------------------------------------------------------------------

MESSAGE_TABLE: list[tuple[str, tuple[Message, ...], list[dict[str, Any]]]] = [
    (
        "user and system text are input_text message items",
        (Message.text("system", "Be terse."), user("hi")),
        [asked("system", "Be terse."), asked("user", "hi")],
    ),
    (
        "assistant text is an output_text message item",
        (Message.text("assistant", "hello"),),
        [said("hello")],
    ),
    (
        "tool calls are function_call items and results function_call_output items, by call_id",
        (
            Message(
                "assistant", (ToolCall("call_a", "add", '{"a":1}'), ToolCall("call_b", "add", ""))
            ),
            Message("tool", (ToolResult("call_a", "add", "3"), ToolResult("call_b", "add", "7"))),
        ),
        [
            call("call_a", '{"a":1}'),
            call("call_b", ""),
            output("call_a", "3"),
            output("call_b", "7"),
        ],
    ),
    (
        "an error result is marked in its text, having no flag on the wire",
        (Message("tool", (ToolResult("call_x", "explode", "RuntimeError: boom", True),)),),
        [output("call_x", "Error: RuntimeError: boom")],
    ),
    (
        "our reasoning item goes back verbatim, in its place among the parts",
        (
            Message(
                "assistant",
                (
                    OpaqueItem("openai-responses", REASONING),
                    TextPart("Adding."),
                    ToolCall("call_a", "add", "{}"),
                ),
            ),
        ),
        [REASONING, said("Adding."), call("call_a")],
    ),
    (
        "thinking and other providers' opaque items are dropped",
        (
            Message(
                "assistant",
                (
                    Thinking("hmm", signature="sig", provider="anthropic"),
                    OpaqueItem("anthropic", {"type": "redacted_thinking", "data": "xyz"}),
                    OpaqueItem("openai", {"type": "reasoning", "id": "rs_other"}),
                    Thinking("a summary of ours", provider="openai-responses"),
                    TextPart("answer"),
                ),
            ),
        ),
        [said("answer")],
    ),
    (
        "a message holding nothing sendable is left out",
        (user("q"), Message("assistant", (Thinking("only thoughts"),)), user(""), user("again")),
        [asked("user", "q"), asked("user", "again")],
    ),
]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [(m, e) for _, m, e in MESSAGE_TABLE],
    ids=[name for name, _, _ in MESSAGE_TABLE],
)
def test_messages_translate_to_input_items(
    messages: tuple[Message, ...], expected: list[dict[str, Any]]
) -> None:
    assert to_wire(request(*messages))["input"] == expected


def test_tool_arguments_are_sent_as_the_exact_json_string_the_model_produced() -> None:
    raw = '{"b":  2, "a": [1, 2.50], "s": "ünï\\"code"}'
    [sent] = to_wire(request(Message("assistant", (ToolCall("c", "add", raw),))))["input"]
    assert sent["arguments"] == raw


@pytest.mark.parametrize(
    ("settings", "instructions", "first"),
    [
        ({}, "Add things up.", asked("user", "hi")),
        ({"instructions_role": "developer"}, None, asked("developer", "Add things up.")),
        ({"instructions_role": "system"}, None, asked("system", "Add things up.")),
    ],
    ids=["the instructions parameter by default", "a developer message", "a system message"],
)
def test_instructions_go_in_the_instructions_parameter_or_a_leading_message(
    settings: dict[str, Any], instructions: str | None, first: dict[str, Any]
) -> None:
    sent = to_wire(request(user("hi"), instructions="Add things up.", settings=settings))
    assert sent.get("instructions") == instructions
    assert sent["input"][0] == first


def test_every_request_is_stateless_and_asks_for_encrypted_reasoning() -> None:
    sent = to_wire(request(user("hi")))
    assert sent == {
        "model": "gpt-5-mini",
        "input": [asked("user", "hi")],
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }


def test_an_include_setting_replaces_the_default_for_models_without_reasoning() -> None:
    assert to_wire(request(user("hi"), settings={"include": []}))["include"] == []


def test_the_provider_prefix_is_stripped_from_the_model_name_and_nothing_else() -> None:
    sent = to_wire(request(user("x"), model="openai-responses:ft:gpt-4.1:acme:v1"))
    assert sent["model"] == "ft:gpt-4.1:acme:v1"


def test_tools_are_flat_function_tools_and_not_strict() -> None:
    assert to_wire(request(user("x"), tools=(ADD,)))["tools"] == [
        {
            "type": "function",
            "name": "add",
            "description": "Add two integers.",
            "parameters": ADD.parameters,
            "strict": False,
        }
    ]


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}
SETTINGS_TABLE: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("reasoning effort", {"reasoning_effort": "low"}, {"reasoning": {"effort": "low"}}),
    ("reasoning summary", {"reasoning_summary": "auto"}, {"reasoning": {"summary": "auto"}}),
    (
        "reasoning effort and summary",
        {"reasoning_effort": "high", "reasoning_summary": "detailed"},
        {"reasoning": {"effort": "high", "summary": "detailed"}},
    ),
    ("max output tokens", {"max_output_tokens": 512}, {"max_output_tokens": 512}),
    ("temperature", {"temperature": 0.2}, {"temperature": 0.2}),
    ("top_p", {"top_p": 0.9}, {"top_p": 0.9}),
    ("service tier", {"service_tier": "flex"}, {"service_tier": "flex"}),
    (
        "a Chat Completions json_schema response format, flattened into text.format",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA},
            }
        },
        {
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "strict": True,
                    "schema": SCHEMA,
                }
            }
        },
    ),
    (
        "a json_object response format",
        {"response_format": {"type": "json_object"}},
        {"text": {"format": {"type": "json_object"}}},
    ),
    ("tool choice", {"tool_choice": "required"}, {"tool_choice": "required"}),
    (
        "a Chat Completions tool choice, flattened",
        {"tool_choice": {"type": "function", "function": {"name": "add"}}},
        {"tool_choice": {"type": "function", "name": "add"}},
    ),
    (
        "a Responses tool choice",
        {"tool_choice": {"type": "function", "name": "add"}},
        {"tool_choice": {"type": "function", "name": "add"}},
    ),
    ("parallel tool calls", {"parallel_tool_calls": False}, {"parallel_tool_calls": False}),
]


@pytest.mark.parametrize(
    ("settings", "sent"),
    [(s, e) for _, s, e in SETTINGS_TABLE],
    ids=[name for name, _, _ in SETTINGS_TABLE],
)
def test_request_settings_are_passed_through(
    settings: dict[str, Any], sent: dict[str, Any]
) -> None:
    body = to_wire(request(user("x"), tools=(ADD,), settings=settings))
    assert {k: body[k] for k in sent} == sent


def test_settings_that_configure_the_client_or_another_provider_are_not_sent() -> None:
    settings = {
        "api_key_env": "OTHER_KEY",
        "base_url": "http://localhost:1/v1",
        "timeout": 5,
        "instructions_role": "user",
        "script": [{"text": "hi"}],
        "thinking_budget": 1024,
        "max_tokens": 100,
        "seed": 7,
        "temperature": None,
    }
    sent = to_wire(request(user("x"), settings=settings))
    assert sorted(sent) == ["include", "input", "model", "store"]


def test_tool_options_are_left_out_when_there_are_no_tools() -> None:
    settings = {"tool_choice": "auto", "parallel_tool_calls": True, "top_p": 0.5}
    sent = to_wire(request(user("x"), settings=settings))
    assert sorted(sent) == ["include", "input", "model", "store", "top_p"]


# --- from_wire --------------------------------------------------------------------------------


def body(reply: wire.Answer) -> dict[str, Any]:
    return wire.response_object(reply, {})


RESPONSE_TABLE: list[tuple[str, wire.Answer, tuple[Any, ...], str]] = [
    ("text", wire.answer(wire.message("Hello.")), (TextPart("Hello."),), "stop"),
    (
        "parallel function calls",
        wire.answer(
            wire.function_call("call_a", "add", '{"a": 1,  "b": 2}'),
            wire.function_call("call_b", "add", '{"a":3,"b":4}'),
        ),
        (
            ToolCall("call_a", "add", '{"a": 1,  "b": 2}'),
            ToolCall("call_b", "add", '{"a":3,"b":4}'),
        ),
        "tool_calls",
    ),
    (
        "reasoning, text and a call keep their order; the reasoning item is kept whole",
        wire.answer(REASONING, wire.message("Adding."), wire.function_call("call_a", "add", "{}")),
        (
            OpaqueItem("openai-responses", REASONING),
            TextPart("Adding."),
            ToolCall("call_a", "add", "{}"),
        ),
        "tool_calls",
    ),
    (
        "a refusal keeps its text",
        wire.answer(wire.refusal("I can't help with that.")),
        (TextPart("I can't help with that."),),
        "refusal",
    ),
    (
        "incomplete at max_output_tokens",
        wire.answer(
            wire.message("It was the best of"),
            status="incomplete",
            incomplete_reason="max_output_tokens",
        ),
        (TextPart("It was the best of"),),
        "length",
    ),
    (
        "incomplete at max_output_tokens in the middle of a call",
        wire.answer(
            wire.function_call("call_a", "add", '{"a": '),
            status="incomplete",
            incomplete_reason="max_output_tokens",
        ),
        (ToolCall("call_a", "add", '{"a": '),),
        "length",
    ),
    (
        "incomplete by the content filter",
        wire.answer(status="incomplete", incomplete_reason="content_filter"),
        (),
        "content_filter",
    ),
]


@pytest.mark.parametrize(
    ("reply", "parts", "finish"),
    [(r, p, f) for _, r, p, f in RESPONSE_TABLE],
    ids=[name for name, _, _, _ in RESPONSE_TABLE],
)
def test_output_items_become_parts_and_the_status_a_finish_reason(
    reply: wire.Answer, parts: tuple[Any, ...], finish: str
) -> None:
    response = from_wire(body(reply))
    assert response.message == Message("assistant", parts)
    assert response.finish_reason == finish


def test_the_sdks_own_model_of_a_response_reads_the_same_as_its_json() -> None:
    data = body(wire.answer(REASONING, wire.function_call("call_a", "add", '{"a": 1}')))
    parsed = Response.construct(**data)
    assert from_wire(parsed) == from_wire(data)
    assert from_wire(parsed).message.parts[0] == OpaqueItem("openai-responses", REASONING)


def test_the_model_is_the_one_the_server_reports_under_our_prefix() -> None:
    response = from_wire(body(wire.answer(wire.message("hi"), model="gpt-5-mini-2025-08-07")))
    assert response.model == "openai-responses:gpt-5-mini-2025-08-07"


FAILED_TABLE: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("a server error is retryable", {"code": "server_error", "message": "oops"}, Retryable),
    ("a rate limit is retryable", {"code": "rate_limit_exceeded", "message": "slow"}, Retryable),
    ("an invalid prompt is fatal", {"code": "invalid_prompt", "message": "no"}, Fatal),
    (
        "a context overflow is its own fatal error",
        {"code": "context_length_exceeded", "message": "Your input exceeds the context window."},
        ContextLengthExceeded,
    ),
]


@pytest.mark.parametrize(
    ("error", "raised"),
    [(e, r) for _, e, r in FAILED_TABLE],
    ids=[name for name, _, _ in FAILED_TABLE],
)
def test_a_failed_response_raises_its_error_classified(
    error: dict[str, Any], raised: type[Exception]
) -> None:
    with pytest.raises(raised, match=error["message"]) as caught:
        from_wire(body(wire.answer(status="failed", error=error)))
    assert type(caught.value) is raised
    assert caught.value.provider == "openai-responses"


# --- usage ------------------------------------------------------------------------------------

USAGE_TABLE: list[tuple[str, dict[str, Any] | None, Usage]] = [
    ("absent usage is zero", None, Usage()),
    ("plain counts", wire.usage(12, 3), Usage(input_tokens=12, output_tokens=3)),
    (
        "cached input tokens stay inside the input count; reasoning tokens are reported",
        wire.usage(2006, 300, cached=1920, reasoning=256),
        Usage(input_tokens=2006, output_tokens=300, cached_tokens=1920, reasoning_tokens=256),
    ),
    (
        "details missing, as from some compatible servers",
        {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
        Usage(input_tokens=5, output_tokens=1),
    ),
]


@pytest.mark.parametrize(
    ("usage", "expected"),
    [(u, e) for _, u, e in USAGE_TABLE],
    ids=[name for name, _, _ in USAGE_TABLE],
)
def test_usage_details_map_to_our_counters(usage: dict[str, Any] | None, expected: Usage) -> None:
    data = {**body(wire.answer(wire.message("x"))), "usage": usage}
    assert usage_from_wire(usage) == expected
    assert from_wire(data).usage == expected


# --- streams ----------------------------------------------------------------------------------


def assemble(reply: wire.Answer, **settings: Any) -> tuple[Any, list[Delta]]:
    """The events the fake server would send for `reply`, fed to an assembler as JSON."""
    deltas: list[Delta] = []
    assembler = StreamAssembler(deltas.append)
    for _, data in wire.events(reply, {"stream": True, **settings}):
        assembler.add(data)
    return assembler.response(), deltas


def test_streamed_text_is_assembled_and_each_piece_is_passed_on() -> None:
    response, deltas = assemble(wire.text_answer("Hel", "lo, ", "world"))
    assert response.message == Message("assistant", (TextPart("Hello, world"),))
    assert deltas == [Delta("text", "Hel"), Delta("text", "lo, "), Delta("text", "world")]


def test_interleaved_argument_fragments_are_kept_apart_by_the_calls_position() -> None:
    reply = wire.answer(
        REASONING,
        wire.function_call("call_0", "add", '{"a": 1}'),
        wire.function_call("call_1", "mul", '{"x": 2, "y": 3}'),
        pieces=(
            (0, "Two sums: two calls."),
            (1, '{"a"'),
            (2, '{"x": 2'),
            (1, ": 1}"),
            (2, ', "y": 3}'),
        ),
    )
    response, deltas = assemble(reply)
    assert response.message.tool_calls == (
        ToolCall("call_0", "add", '{"a": 1}'),
        ToolCall("call_1", "mul", '{"x": 2, "y": 3}'),
    )
    assert deltas == [
        Delta("thinking", "Two sums: two calls."),
        Delta("tool_arguments", '{"a"', 0),
        Delta("tool_arguments", '{"x": 2', 1),
        Delta("tool_arguments", ": 1}", 0),
        Delta("tool_arguments", ', "y": 3}', 1),
    ]


def test_the_reasoning_item_is_taken_whole_from_its_done_event_not_from_when_it_was_added() -> None:
    response, _ = assemble(wire.answer(REASONING, wire.message("ok")))
    assert response.message.parts[0] == OpaqueItem("openai-responses", REASONING)


def test_items_come_from_output_item_done_when_the_final_event_lists_none() -> None:
    deltas: list[Delta] = []
    assembler = StreamAssembler(deltas.append)
    for kind, data in wire.events(wire.answer(REASONING, wire.message("ok")), {}):
        if kind == "response.completed":
            data = {**data, "response": {**data["response"], "output": []}}
        assembler.add(data)
    assert assembler.response().message.parts == (
        OpaqueItem("openai-responses", REASONING),
        TextPart("ok"),
    )


def test_a_streamed_refusal_finishes_as_refusal_with_its_text() -> None:
    response, deltas = assemble(
        wire.answer(wire.refusal("I can't do that."), pieces=((0, "I can't "), (0, "do that.")))
    )
    assert response.finish_reason == "refusal"
    assert response.message.parts == (TextPart("I can't do that."),)
    assert [d.text for d in deltas] == ["I can't ", "do that."]


def test_a_streamed_incomplete_response_finishes_by_its_reason() -> None:
    reply = wire.text_answer("It was", status="incomplete", incomplete_reason="max_output_tokens")
    response, _ = assemble(reply)
    assert response.finish_reason == "length"
    assert response.message.joined_text == "It was"


def test_the_usage_comes_from_the_completed_event() -> None:
    reply = wire.text_answer("ok", usage=wire.usage(40, 2, cached=32, reasoning=1))
    response, _ = assemble(reply)
    assert response.usage == Usage(
        input_tokens=40, output_tokens=2, cached_tokens=32, reasoning_tokens=1
    )


def test_a_failed_event_and_an_error_event_raise_their_errors_classified() -> None:
    failed = wire.answer(status="failed", error={"code": "server_error", "message": "oops"})
    with pytest.raises(Retryable, match="oops"):
        assemble(failed)
    invalid = wire.text_answer("x", error_event=wire.error_event("bad input", "invalid_prompt"))
    with pytest.raises(Fatal, match="bad input"):
        assemble(invalid)


def test_a_stream_that_stops_before_its_final_event_is_retryable() -> None:
    with pytest.raises(Retryable, match="stream ended"):
        assemble(wire.text_answer("half an ans", cut=True))
