"""Our message types and their one JSON adapter."""

import dataclasses
import json

import pytest

from providers.types import (
    Message,
    OpaqueItem,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    Usage,
    message_from_json,
    message_from_stored,
    message_to_json,
    usage_from_json,
    usage_to_json,
)

PARTS = {
    "text": TextPart("Hello, wörld ✓"),
    "tool_call": ToolCall("call_1", "add", '{"a": 1, "b": 2}'),
    "tool_result": ToolResult("call_1", "add", "3"),
    "tool_result_error": ToolResult("call_2", "explode", "RuntimeError: boom", is_error=True),
    "thinking": Thinking("first, add", signature="sig==", provider="anthropic"),
    "thinking_redacted": Thinking("", signature=None, redacted=True, provider="anthropic"),
    "opaque": OpaqueItem("openai", {"type": "reasoning", "encrypted": "abc", "n": [1, None]}),
}


@pytest.mark.parametrize("part", PARTS.values(), ids=PARTS.keys())
def test_every_part_kind_survives_a_json_round_trip(part):
    message = Message("assistant", (part,))
    data = message_to_json(message)
    assert json.loads(json.dumps(data)) == data  # plain JSON, nothing else
    assert data["parts"][0]["kind"] == part.kind
    restored = message_from_json(json.loads(json.dumps(data)))
    assert restored == message
    assert type(restored.parts[0]) is type(part)


def test_a_message_mixing_every_part_kind_keeps_their_order():
    message = Message("assistant", tuple(PARTS.values()))
    restored = message_from_json(json.loads(json.dumps(message_to_json(message))))
    assert restored == message
    assert [p.kind for p in restored.parts] == [p.kind for p in PARTS.values()]


@pytest.mark.parametrize("role", ["system", "user", "assistant", "tool"])
def test_every_role_survives_a_json_round_trip(role):
    message = Message.text(role, "hi")
    assert message_from_json(message_to_json(message)) == message


def test_message_to_json_has_the_documented_shape():
    message = Message("assistant", (TextPart("hi"), ToolCall("c1", "add", "{}")))
    assert message_to_json(message) == {
        "role": "assistant",
        "parts": [
            {"text": "hi", "kind": "text"},
            {"id": "c1", "name": "add", "arguments": "{}", "kind": "tool_call"},
        ],
    }


def test_message_from_json_fills_defaults_of_missing_optional_fields():
    message = message_from_json(
        {
            "role": "tool",
            "parts": [{"kind": "tool_result", "call_id": "c", "name": "n", "content": "x"}],
        }
    )
    assert message.parts == (ToolResult("c", "n", "x", is_error=False),)


@pytest.mark.parametrize(
    "data",
    [
        {"role": "robot", "parts": []},
        {"role": "user", "parts": [{"kind": "video", "url": "x"}]},
        {"role": "user", "parts": [{"text": "no kind"}]},
        {"role": "user"},
    ],
    ids=["unknown-role", "unknown-kind", "missing-kind", "missing-parts"],
)
def test_message_from_json_rejects_malformed_data(data):
    with pytest.raises(ValueError):
        message_from_json(data)


@pytest.mark.parametrize("part", PARTS.values(), ids=PARTS.keys())
def test_a_stored_message_is_read_back_from_its_role_and_the_json_text_of_its_parts(part):
    message = Message("tool" if part.kind.startswith("tool_result") else "assistant", (part,))
    parts = json.dumps(message_to_json(message)["parts"])
    assert message_from_stored(message.role, parts) == message


@pytest.mark.parametrize(
    ("role", "parts"),
    [("wizard", "[]"), ("user", '[{"text": "hi"}]'), ("user", "[{"), ('user", "x": "', "[]")],
    ids=["unknown-role", "missing-kind", "not-json", "role-that-is-not-a-role"],
)
def test_a_stored_message_that_is_malformed_is_rejected(role, parts):
    with pytest.raises(ValueError):
        message_from_stored(role, parts)


def test_messages_are_frozen():
    message = Message.text("user", "hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.role = "assistant"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.parts[0].text = "changed"  # type: ignore[misc]


def test_message_text_builds_a_single_text_part():
    assert Message.text("user", "hello") == Message("user", (TextPart("hello"),))


def test_joined_text_concatenates_text_parts_and_skips_the_rest():
    message = Message(
        "assistant",
        (
            Thinking("secret reasoning"),
            TextPart("The answer "),
            ToolCall("c1", "add", "{}"),
            TextPart("is 42."),
            OpaqueItem("openai", {"x": 1}),
        ),
    )
    assert message.joined_text == "The answer is 42."


def test_joined_text_of_a_message_without_text_is_empty():
    assert Message("assistant", (ToolCall("c1", "add", "{}"),)).joined_text == ""
    assert Message("assistant", ()).joined_text == ""


def test_tool_calls_are_the_calls_in_the_models_order():
    first, second = ToolCall("c2", "nap", "{}"), ToolCall("c1", "add", "{}")
    message = Message("assistant", (TextPart("doing it"), first, Thinking("x"), second))
    assert message.tool_calls == (first, second)
    assert Message.text("assistant", "no calls").tool_calls == ()


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [('{"a": 1}', {"a": 1}), ("", {}), ("[1]", [1])],
    ids=["object", "empty-means-no-arguments", "array"],
)
def test_tool_call_parsed_arguments(raw, parsed):
    assert ToolCall("c", "t", raw).parsed_arguments() == parsed


def test_tool_call_parsed_arguments_raises_value_error_on_malformed_json():
    with pytest.raises(ValueError):
        ToolCall("c", "t", '{"a": ').parsed_arguments()


def test_usage_adds_every_counter():
    one = Usage(1, 2, 3, 4, 5)
    two = Usage(10, 20, 30, 40, 50)
    assert one + two == Usage(11, 22, 33, 44, 55)
    assert one + Usage() == one
    assert Usage() + Usage() == Usage()


def test_usage_addition_is_associative_and_commutative():
    a, b, c = Usage(1, 0, 2), Usage(0, 5, 0, 1), Usage(3, 3, 3, 3, 3)
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a


def test_usage_sums_with_the_builtin_sum_from_an_empty_usage():
    parts = [Usage(1, 1), Usage(2, 2), Usage(3, 3)]
    assert sum(parts, Usage()) == Usage(6, 6)


def test_usage_round_trips_through_json_and_missing_counters_are_zero():
    usage = Usage(100, 20, cached_tokens=5, cache_write_tokens=2, reasoning_tokens=7)
    assert usage_from_json(json.loads(json.dumps(usage_to_json(usage)))) == usage
    assert usage_from_json({"input_tokens": 3}) == Usage(input_tokens=3)
    assert usage_from_json({}) == Usage()
    assert usage_from_json(None) == Usage()
