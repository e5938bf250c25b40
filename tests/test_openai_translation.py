"""The OpenAI provider's pure translation, read as tables: our types <-> Chat Completions JSON.

Wire objects on the way in are parsed by the SDK's own types from JSON built as
the API reference shows it (tests/fake_openai.py), never mocked.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from providers.errors import Retryable
from providers.openai import (
    HTTP,
    StreamAssembler,
    chunk_json,
    from_wire,
    retry_after,
    to_wire,
    usage_from_wire,
)
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
from tests import fake_openai as wire

ADD = ToolSpec(
    "add",
    "Add two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)


def request(*messages: Message, **kw: Any) -> ModelRequest:
    return ModelRequest(
        model=kw.pop("model", "openai:gpt-4.1-mini"),
        instructions=kw.pop("instructions", ""),
        messages=messages,
        **kw,
    )


def user(text: str) -> Message:
    return Message.text("user", text)


# --- to_wire: messages ------------------------------------------------------------------------

MESSAGE_TABLE: list[tuple[str, tuple[Message, ...], list[dict[str, Any]]]] = [
    (
        "system and user text map to their roles",
        (Message.text("system", "Be terse."), user("hi")),
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
    ),
    (
        "assistant text is a plain assistant message",
        (Message.text("assistant", "hello"),),
        [{"role": "assistant", "content": "hello"}],
    ),
    (
        "an assistant message with only tool calls has null content",
        (Message("assistant", (ToolCall("call_1", "add", '{"a": 1, "b": 2}'),)),),
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                    }
                ],
            }
        ],
    ),
    (
        "text and tool calls form one assistant message",
        (Message("assistant", (TextPart("Let me add."), ToolCall("c", "add", "{}"))),),
        [
            {
                "role": "assistant",
                "content": "Let me add.",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{}"}}
                ],
            }
        ],
    ),
    (
        "parallel tool calls form one assistant message and one tool message per tool_call_id",
        (
            Message(
                "assistant",
                (ToolCall("call_a", "add", '{"a":1,"b":2}'), ToolCall("call_b", "add", "{}")),
            ),
            Message("tool", (ToolResult("call_a", "add", "3"), ToolResult("call_b", "add", "7"))),
        ),
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a":1,"b":2}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "add", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "3"},
            {"role": "tool", "tool_call_id": "call_b", "content": "7"},
        ],
    ),
    (
        "an error result is marked in its text, having no flag on the wire",
        (Message("tool", (ToolResult("call_x", "explode", "RuntimeError: boom", True),)),),
        [{"role": "tool", "tool_call_id": "call_x", "content": "Error: RuntimeError: boom"}],
    ),
    (
        "thinking and opaque parts from another provider are dropped",
        (
            Message(
                "assistant",
                (
                    Thinking("hmm", signature="sig", provider="anthropic"),
                    OpaqueItem("anthropic", {"type": "redacted_thinking", "data": "xyz"}),
                    TextPart("answer"),
                ),
            ),
        ),
        [{"role": "assistant", "content": "answer"}],
    ),
    (
        "an assistant message holding nothing sendable is left out",
        (user("q"), Message("assistant", (Thinking("only thoughts"),)), user("again")),
        [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}],
    ),
]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [(m, e) for _, m, e in MESSAGE_TABLE],
    ids=[name for name, _, _ in MESSAGE_TABLE],
)
def test_messages_translate_to_the_wire(
    messages: tuple[Message, ...], expected: list[dict[str, Any]]
) -> None:
    assert to_wire(request(*messages))["messages"] == expected


def test_tool_arguments_are_sent_as_the_exact_json_string_never_a_python_repr() -> None:
    raw = '{"b":  2, "a": [1, 2.50], "s": "ünï\\"code"}'
    sent = to_wire(request(Message("assistant", (ToolCall("c", "add", raw),))))
    arguments = sent["messages"][0]["tool_calls"][0]["function"]["arguments"]
    assert arguments == raw
    assert isinstance(arguments, str)


@pytest.mark.parametrize(
    ("settings", "first"),
    [
        ({}, {"role": "system", "content": "Add things up."}),
        ({"instructions_role": "developer"}, {"role": "developer", "content": "Add things up."}),
        ({"instructions_role": "system"}, {"role": "system", "content": "Add things up."}),
    ],
    ids=["system by default", "developer on request", "system when asked"],
)
def test_instructions_become_a_leading_system_or_developer_message(
    settings: dict[str, Any], first: dict[str, Any]
) -> None:
    sent = to_wire(request(user("hi"), instructions="Add things up.", settings=settings))
    assert sent["messages"] == [first, {"role": "user", "content": "hi"}]


def test_empty_instructions_add_no_message() -> None:
    assert to_wire(request(user("hi")))["messages"] == [{"role": "user", "content": "hi"}]


# --- to_wire: model, tools and settings -------------------------------------------------------


def test_the_provider_prefix_is_stripped_from_the_model_name_and_nothing_else() -> None:
    assert to_wire(request(user("x"), model="openai:ft:gpt-4o:acme:v1"))["model"] == (
        "ft:gpt-4o:acme:v1"
    )


def test_tools_become_function_tools_with_their_schema() -> None:
    sent = to_wire(request(user("x"), tools=(ADD,)))
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": ADD.parameters,
            },
        }
    ]


SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
    },
}

SETTINGS_TABLE: list[tuple[str, Any]] = [
    ("temperature", 0.2),
    ("top_p", 0.9),
    ("max_tokens", 256),
    ("max_completion_tokens", 512),
    ("reasoning_effort", "low"),
    ("response_format", SCHEMA_FORMAT),
    ("seed", 7),
    ("stop", ["\n\n", "END"]),
    ("tool_choice", "required"),
    ("tool_choice", {"type": "function", "function": {"name": "add"}}),
    ("parallel_tool_calls", False),
]


@pytest.mark.parametrize(("key", "value"), SETTINGS_TABLE, ids=[k for k, _ in SETTINGS_TABLE])
def test_request_settings_pass_through_unchanged(key: str, value: Any) -> None:
    sent = to_wire(request(user("x"), tools=(ADD,), settings={key: value}))
    assert sent[key] == value


def test_settings_that_configure_the_client_or_another_provider_are_not_sent() -> None:
    settings = {
        "api_key_env": "OTHER_KEY",
        "base_url": "http://localhost:1/v1",
        "timeout": 5,
        "instructions_role": "developer",
        "script": [{"text": "hi"}],
        "temperature": None,
    }
    sent = to_wire(request(user("x"), settings=settings))
    assert sorted(sent) == ["messages", "model"]


def test_tool_options_are_left_out_when_there_are_no_tools() -> None:
    settings = {"tool_choice": "auto", "parallel_tool_calls": True, "seed": 1}
    sent = to_wire(request(user("x"), settings=settings))
    assert sorted(sent) == ["messages", "model", "seed"]


# --- from_wire --------------------------------------------------------------------------------


def parsed(reply: wire.Completion) -> ChatCompletion:
    return ChatCompletion.model_validate(reply.body)


FINISH_TABLE = [
    ("stop", "stop"),
    ("length", "length"),
    ("content_filter", "content_filter"),
    ("tool_calls", "tool_calls"),
    ("function_call", "tool_calls"),
]


@pytest.mark.parametrize(("wire_reason", "ours"), FINISH_TABLE, ids=[w for w, _ in FINISH_TABLE])
def test_finish_reasons_map_to_ours(wire_reason: str, ours: str) -> None:
    response = from_wire(parsed(wire.completion("partial", finish_reason=wire_reason)))
    assert response.finish_reason == ours


def test_a_text_completion_becomes_one_text_part() -> None:
    response = from_wire(parsed(wire.completion("Hello there.", model="gpt-4.1-2025-04-14")))
    assert response.message == Message("assistant", (TextPart("Hello there."),))
    assert response.model == "openai:gpt-4.1-2025-04-14"


def test_tool_calls_keep_their_ids_order_and_raw_arguments() -> None:
    reply = wire.completion(
        None,
        tool_calls=[
            wire.tool_call("call_1", "add", '{"a": 1,  "b": 2}'),
            wire.tool_call("call_2", "add", '{"a":3,"b":4}'),
        ],
        finish_reason="tool_calls",
    )
    response = from_wire(parsed(reply))
    assert response.message.parts == (
        ToolCall("call_1", "add", '{"a": 1,  "b": 2}'),
        ToolCall("call_2", "add", '{"a":3,"b":4}'),
    )
    assert response.finish_reason == "tool_calls"


def test_tool_calls_after_a_stop_reason_still_finish_as_tool_calls() -> None:
    reply = wire.completion(None, tool_calls=[wire.tool_call("c", "add", "{}")])
    assert from_wire(parsed(reply)).finish_reason == "tool_calls"


def test_a_refusal_becomes_the_refusal_finish_with_its_text() -> None:
    response = from_wire(parsed(wire.completion(None, refusal="I can't help with that.")))
    assert response.finish_reason == "refusal"
    assert response.message.parts == (TextPart("I can't help with that."),)


def test_a_deprecated_function_call_becomes_a_tool_call() -> None:
    body = wire.completion(None, finish_reason="function_call").body
    body["choices"][0]["message"]["function_call"] = {"name": "add", "arguments": '{"a":1}'}
    response = from_wire(ChatCompletion.model_validate(body))
    assert response.message.tool_calls == (ToolCall("call_chatcmpl-fake", "add", '{"a":1}'),)
    assert response.finish_reason == "tool_calls"


def test_a_completion_without_choices_is_retryable() -> None:
    body = wire.completion("x").body
    body["choices"] = []
    with pytest.raises(Retryable, match="without choices"):
        from_wire(ChatCompletion.model_validate(body))


# --- usage ------------------------------------------------------------------------------------

USAGE_TABLE: list[tuple[str, dict[str, Any] | None, Usage]] = [
    ("absent usage is zero", None, Usage()),
    ("plain counts", wire.token_usage(12, 3), Usage(input_tokens=12, output_tokens=3)),
    (
        "cached and reasoning details",
        wire.token_usage(2006, 300, cached=1920, reasoning=256),
        Usage(input_tokens=2006, output_tokens=300, cached_tokens=1920, reasoning_tokens=256),
    ),
    (
        "details missing, as from some compatible servers",
        {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        Usage(input_tokens=5, output_tokens=1),
    ),
    (
        "null detail counters",
        {
            "prompt_tokens": 5,
            "completion_tokens": 1,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": None},
            "completion_tokens_details": {"reasoning_tokens": None},
        },
        Usage(input_tokens=5, output_tokens=1),
    ),
]


@pytest.mark.parametrize(
    ("usage", "expected"),
    [(u, e) for _, u, e in USAGE_TABLE],
    ids=[name for name, _, _ in USAGE_TABLE],
)
def test_usage_details_map_to_our_counters(usage: dict[str, Any] | None, expected: Usage) -> None:
    body = wire.completion("x").body
    body["usage"] = usage
    assert usage_from_wire(ChatCompletion.model_validate(body).usage) == expected
    assert from_wire(ChatCompletion.model_validate(body)).usage == expected


# --- streams ----------------------------------------------------------------------------------


def chunks(stream: wire.Stream, *, with_usage: bool = True) -> list[dict[str, Any]]:
    """The chunks the fake server would send for `stream`, as JSON; each one is also a valid
    chunk by the SDK's own type."""
    events = list(wire.events(stream, with_usage))
    assert events[-1] == "[DONE]" or stream.cut or stream.error
    found = [json.loads(e) for e in events if e != "[DONE]" and "error" not in json.loads(e)]
    for chunk in found:
        ChatCompletionChunk.model_validate(chunk)
    return found


def assemble(stream: wire.Stream, **kw: Any) -> tuple[Any, list[Delta]]:
    deltas: list[Delta] = []
    assembler = StreamAssembler(deltas.append)
    for chunk in chunks(stream, **kw):
        assembler.add(chunk)
    return assembler.response(), deltas


def test_streamed_text_is_assembled_and_each_piece_is_passed_on() -> None:
    response, deltas = assemble(wire.Stream(wire.text_deltas("Hel", "lo, ", "world")))
    assert response.message == Message("assistant", (TextPart("Hello, world"),))
    assert deltas == [Delta("text", "Hel"), Delta("text", "lo, "), Delta("text", "world")]


def test_interleaved_tool_call_fragments_are_assembled_by_index() -> None:
    stream = wire.Stream(
        (
            wire.call_start(0, "call_0", "add"),
            wire.call_arguments(0, '{"a"'),
            wire.call_start(1, "call_1", "mul"),
            wire.call_arguments(1, '{"x": 2'),
            wire.call_arguments(0, ": 1}"),
            wire.call_arguments(1, ', "y": 3}'),
        ),
        finish_reason="tool_calls",
    )
    response, deltas = assemble(stream)
    assert response.message.tool_calls == (
        ToolCall("call_0", "add", '{"a": 1}'),
        ToolCall("call_1", "mul", '{"x": 2, "y": 3}'),
    )
    assert deltas == [
        Delta("tool_arguments", '{"a"', 0),
        Delta("tool_arguments", '{"x": 2', 1),
        Delta("tool_arguments", ": 1}", 0),
        Delta("tool_arguments", ', "y": 3}', 1),
    ]


def test_a_server_that_repeats_the_id_and_sends_arguments_at_once_is_understood() -> None:
    fragment = wire.call_start(0, "call_0", "add")
    fragment["tool_calls"][0]["function"]["arguments"] = '{"a": 1, "b": 2}'
    response, _ = assemble(wire.Stream((fragment,), finish_reason="tool_calls"))
    assert response.message.tool_calls == (ToolCall("call_0", "add", '{"a": 1, "b": 2}'),)


def test_the_final_usage_chunk_with_empty_choices_gives_the_usage() -> None:
    stream = wire.Stream(wire.text_deltas("ok"), usage=wire.token_usage(40, 2, cached=32))
    response, _ = assemble(stream)
    assert response.usage == Usage(input_tokens=40, output_tokens=2, cached_tokens=32)


def test_a_stream_without_the_usage_chunk_has_zero_usage() -> None:
    response, _ = assemble(wire.Stream(wire.text_deltas("ok")), with_usage=False)
    assert response.usage == Usage()
    assert response.message.joined_text == "ok"


def test_a_streamed_refusal_finishes_as_refusal() -> None:
    stream = wire.Stream(({"refusal": "I can't "}, {"refusal": "do that."}))
    response, deltas = assemble(stream)
    assert response.finish_reason == "refusal"
    assert response.message.parts == (TextPart("I can't do that."),)
    assert [d.text for d in deltas] == ["I can't ", "do that."]


def test_a_stream_that_stops_before_a_finish_reason_is_retryable() -> None:
    with pytest.raises(Retryable, match="stream ended"):
        assemble(wire.Stream(wire.text_deltas("half an ans"), cut=True))


def test_an_error_object_inside_a_stream_raises_the_sdk_s_error_with_its_body() -> None:
    data = json.dumps({"error": {"message": "overloaded", "type": "server_error", "code": None}})

    request = HTTP.Request("POST", "http://127.0.0.1/v1/chat/completions")

    with pytest.raises(openai.APIError, match="overloaded") as raised:
        chunk_json(data, request)

    assert raised.value.body == {"message": "overloaded", "type": "server_error", "code": None}
    assert chunk_json('{"id": "c", "choices": []}', request) == {"id": "c", "choices": []}


# --- retry-after ------------------------------------------------------------------------------

NOW = 1_760_000_000.0
RETRY_TABLE: list[tuple[str, dict[str, str], float | None]] = [
    ("nothing", {}, None),
    ("seconds", {"retry-after": "7"}, 7.0),
    ("fractional seconds", {"Retry-After": "2.5"}, 2.5),
    ("milliseconds", {"retry-after-ms": "1500"}, 1.5),
    ("milliseconds win", {"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ("an HTTP date", {"retry-after": "Thu, 09 Oct 2025 20:54:20 GMT"}, 1_760_043_260.0 - NOW),
    ("a date in the past", {"retry-after": "Mon, 01 Jan 2024 00:00:00 GMT"}, 0.0),
    ("garbage", {"retry-after": "soon"}, None),
    ("negative", {"retry-after": "-3"}, 0.0),
    ("infinite", {"retry-after": "inf"}, None),
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [(h, e) for _, h, e in RETRY_TABLE],
    ids=[name for name, _, _ in RETRY_TABLE],
)
def test_retry_after_is_read_from_the_headers(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after(headers, now=NOW) == expected
