"""The scripted provider: an offline, deterministic stand-in model."""

import json

import pytest

from providers import Fatal, Providers, ScriptedProvider, split_model
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    TextPart,
    ToolCall,
    ToolResult,
    Usage,
)

PROVIDER = ScriptedProvider()


def _demo(*messages: Message) -> ModelRequest:
    return ModelRequest("scripted:demo", "Be helpful.", messages)


def _user(text: str) -> Message:
    return Message.text("user", text)


def _scripted(messages, script, **settings) -> ModelRequest:
    return ModelRequest(
        "scripted:test",
        "Follow the script.",
        tuple(messages),
        settings={"script": script, **settings},
    )


def _expressions(message: Message) -> list[str]:
    return [
        json.loads(c.arguments)["expression"] for c in message.tool_calls if c.name == "calculate"
    ]


# The demo rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expressions"),
    [
        ("What is 17 * 23?", ["17 * 23"]),
        ("Compute 2+2 and 10 / 4, then 3 ** 2.", ["2+2", "10 / 4", "3 ** 2"]),
        ("1.5 * 4 please", ["1.5 * 4"]),
        ("what about 2 + 3 * 4 - 1", ["2 + 3 * 4 - 1"]),
    ],
    ids=["one", "three", "float", "precedence"],
)
def test_demo_turns_each_arithmetic_expression_into_a_parallel_calculate_call(
    question, expressions
):
    response = PROVIDER.complete(_demo(_user(question)))
    assert response.finish_reason == "tool_calls"
    calls = response.message.tool_calls
    assert [c.name for c in calls] == ["calculate"] * len(expressions)
    assert [c.id for c in calls] == [f"call_1_{i}" for i in range(len(expressions))]
    assert _expressions(response.message) == expressions
    assert response.model == "scripted:demo"


def test_demo_expression_with_parentheses_is_sent_balanced():
    response = PROVIDER.complete(_demo(_user("What is (2 + 3) * 4?")))
    (expression,) = _expressions(response.message)
    assert expression.count("(") == expression.count(")"), expression


@pytest.mark.parametrize(
    "question", ["What time is it?", "Check the clock", "What's the DATE today?"]
)
def test_demo_asks_for_current_time_when_asked_about_the_time(question):
    response = PROVIDER.complete(_demo(_user(question)))
    (call,) = response.message.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("call_1_0", "current_time", {})


def test_demo_numbers_the_time_call_after_the_calculations():
    response = PROVIDER.complete(_demo(_user("What is 6 * 7, and what time is it?")))
    assert [(c.id, c.name) for c in response.message.tool_calls] == [
        ("call_1_0", "calculate"),
        ("call_1_1", "current_time"),
    ]


@pytest.mark.parametrize("question", ["Hello there", "Tell me a story", "timeline of 1999"])
def test_demo_without_an_expression_explains_that_it_is_a_stand_in(question):
    response = PROVIDER.complete(_demo(_user(question)))
    assert response.finish_reason == "stop"
    assert response.message.tool_calls == ()
    text = response.message.joined_text
    assert "scripted stand-in" in text
    assert "OPENAI_API_KEY" in text


def test_demo_answers_with_the_tool_results_once_they_are_in():
    question = _user("What is 17 * 23 and 2 + 2? And the time?")
    asked = PROVIDER.complete(_demo(question)).message
    results = Message(
        "tool",
        (
            ToolResult("call_1_0", "calculate", "391"),
            ToolResult("call_1_1", "calculate", "4"),
            ToolResult("call_1_2", "current_time", "2026-01-01T12:00:00+00:00"),
        ),
    )
    response = PROVIDER.complete(_demo(question, asked, results))
    assert response.finish_reason == "stop"
    assert response.message.joined_text.splitlines() == [
        "17 * 23 = 391",
        "2 + 2 = 4",
        "current_time: 2026-01-01T12:00:00+00:00",
    ]


def test_demo_reports_a_failed_tool_in_its_answer():
    question = _user("What is 1 / 0?")
    asked = PROVIDER.complete(_demo(question)).message
    results = Message(
        "tool", (ToolResult("call_1_0", "calculate", "ZeroDivisionError: division by zero", True),)
    )
    text = PROVIDER.complete(_demo(question, asked, results)).message.joined_text
    assert text == "The calculate tool failed: ZeroDivisionError: division by zero"


def test_demo_call_ids_are_unique_within_the_thread():
    first = _user("What is 1 + 1?")
    asked = PROVIDER.complete(_demo(first)).message
    results = Message("tool", (ToolResult(asked.tool_calls[0].id, "calculate", "2"),))
    answered = PROVIDER.complete(_demo(first, asked, results)).message
    assert answered.joined_text == "1 + 1 = 2"
    second = _user("And 1 + 1 again?")
    again = PROVIDER.complete(_demo(first, asked, results, answered, second)).message
    assert [c.id for c in asked.tool_calls] == ["call_1_0"]
    assert [c.id for c in again.tool_calls] == ["call_5_0"]


def test_demo_uses_only_the_latest_user_message_and_its_own_results():
    first = _user("What is 1 + 1?")
    asked = PROVIDER.complete(_demo(first)).message
    results = Message("tool", (ToolResult(asked.tool_calls[0].id, "calculate", "2"),))
    answered = PROVIDER.complete(_demo(first, asked, results)).message
    second = _user("And 5 * 5?")
    again = PROVIDER.complete(_demo(first, asked, results, answered, second)).message
    assert _expressions(again) == ["5 * 5"]
    later = Message("tool", (ToolResult(again.tool_calls[0].id, "calculate", "25"),))
    history = (first, asked, results, answered, second, again, later)
    assert PROVIDER.complete(_demo(*history)).message.joined_text == "5 * 5 = 25"


# Scripts -----------------------------------------------------------------------------------------

SCRIPT = [
    {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]},
    {
        "text": "second",
        "tool_calls": [{"id": "mine", "name": "nap", "arguments": '{"seconds": 1}'}],
    },
    {"text": "done"},
]


@pytest.mark.parametrize(
    ("roles", "turn"),
    [
        (["user"], 0),
        (["system", "user"], 0),
        (["user", "assistant", "tool"], 1),
        (["user", "assistant", "tool", "assistant", "tool"], 2),
        (["user", "assistant", "tool", "assistant", "tool", "user"], 0),
        (["user", "assistant", "user", "assistant", "tool"], 1),
    ],
    ids=[
        "first",
        "after-system",
        "after-one-round",
        "after-two-rounds",
        "new-user-message-restarts",
        "counts-since-latest-user",
    ],
)
def test_script_turn_is_the_number_of_assistant_turns_since_the_latest_user_message(roles, turn):
    messages = [Message.text(role, role) for role in roles]
    response = PROVIDER.complete(_scripted(messages, SCRIPT))
    expected = [
        Message(
            "assistant",
            (ToolCall(f"call_{len(roles)}_0", "add", json.dumps({"a": 1, "b": 2})),),
        ),
        Message("assistant", (TextPart("second"), ToolCall("mine", "nap", '{"seconds": 1}'))),
        Message.text("assistant", "done"),
    ][turn]
    assert response.message == expected


def test_script_turn_finish_reason_follows_the_tool_calls():
    turns = [["user"], ["user", "assistant", "tool", "assistant", "tool"]]
    reasons = [
        PROVIDER.complete(_scripted([Message.text(r, r) for r in t], SCRIPT)).finish_reason
        for t in turns
    ]
    assert reasons == ["tool_calls", "stop"]


def test_script_gives_default_call_ids_by_conversation_length_and_position():
    script = [{"tool_calls": [{"name": "a"}, {"name": "b", "arguments": {}}]}]
    response = PROVIDER.complete(_scripted([_user("go")], script))
    assert [(c.id, c.name, c.arguments) for c in response.message.tool_calls] == [
        ("call_1_0", "a", "{}"),
        ("call_1_1", "b", "{}"),
    ]


def test_script_call_ids_stay_unique_when_the_last_turn_repeats():
    script = [{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}]
    history = [_user("go")]
    ids = []
    for _ in range(3):
        reply = PROVIDER.complete(_scripted(history, script, repeat_last=True)).message
        ids.extend(c.id for c in reply.tool_calls)
        history += [reply, Message("tool", (ToolResult(ids[-1], "add", "2"),))]
    assert len(set(ids)) == 3


def test_script_that_runs_out_is_fatal():
    messages = [_user("go"), Message.text("assistant", "one"), Message.text("tool", "x")]
    with pytest.raises(Fatal, match=r"scripted:test ran out of script at turn 2"):
        PROVIDER.complete(_scripted(messages, [{"text": "only one turn"}]))


def test_script_with_repeat_last_keeps_replaying_the_last_turn():
    script = [{"text": "first"}, {"text": "again"}]
    history = [_user("go")]
    answers = []
    for _ in range(4):
        reply = PROVIDER.complete(_scripted(history, script, repeat_last=True)).message
        answers.append(reply.joined_text)
        history += [reply, Message.text("tool", "ok")]
    assert answers == ["first", "again", "again", "again"]


@pytest.mark.parametrize(
    "settings",
    [{}, {"script": []}, {"script": "say hi"}, {"script": {"text": "hi"}}],
    ids=["missing", "empty", "a-string", "a-dict"],
)
def test_script_that_is_missing_or_not_a_list_is_fatal(settings):
    request = ModelRequest("scripted:nameless", "", (_user("go"),), settings=settings)
    with pytest.raises(
        Fatal, match=r"scripted:nameless needs model_settings\['script'\]"
    ) as caught:
        PROVIDER.complete(request)
    assert (caught.value.provider, caught.value.model) == ("scripted", "nameless")


# Streaming and usage -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "done",
        "The answer is 42.",
        "two\nlines  with   gaps\n",
        "  leading spaces",
        "tabs\tand\ttrailing ",
    ],
    ids=["word", "sentence", "newlines", "leading-space", "tabs"],
)
def test_deltas_reassemble_the_final_text(text):
    deltas: list[Delta] = []
    response = PROVIDER.complete(_scripted([_user("go")], [{"text": text}]), deltas.append)
    assert response.message.joined_text == text
    assert all(d.kind == "text" for d in deltas)
    assert "".join(d.text for d in deltas) == text


def test_demo_deltas_reassemble_the_final_answer():
    deltas: list[Delta] = []
    response = PROVIDER.complete(_demo(_user("Hello")), deltas.append)
    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == response.message.joined_text


def test_tool_calls_emit_no_text_deltas():
    deltas: list[Delta] = []
    PROVIDER.complete(_demo(_user("What is 2 + 2?")), deltas.append)
    assert deltas == []


def test_usage_is_deterministic_and_positive():
    request = _demo(_user("What is 17 * 23?"))
    first, second = PROVIDER.complete(request), ScriptedProvider().complete(request)
    assert first == second
    assert first.usage.input_tokens > 0
    assert first.usage.output_tokens > 0
    assert first.usage == Usage(first.usage.input_tokens, first.usage.output_tokens)


def test_usage_grows_with_the_prompt():
    short = PROVIDER.complete(_demo(_user("Hello"))).usage
    long = PROVIDER.complete(_demo(_user("Hello " * 200))).usage
    assert long.input_tokens > short.input_tokens


# Choosing the provider ---------------------------------------------------------------------------


def test_registry_serves_scripted_models_with_one_instance_per_process():
    providers = Providers()
    first = providers.for_model("scripted:demo")
    assert isinstance(first, ScriptedProvider)
    assert providers.for_model("scripted:other") is first


@pytest.mark.parametrize("model", ["nonexistent:model", "gpt-4", ":x", "scripted:"])
def test_registry_rejects_unknown_or_malformed_model_strings(model):
    with pytest.raises(Fatal):
        Providers().for_model(model)


@pytest.mark.parametrize(
    ("model", "parts"),
    [
        ("openai:gpt-4.1-mini", ("openai", "gpt-4.1-mini")),
        ("scripted:demo", ("scripted", "demo")),
        ("anthropic:claude:with-colon", ("anthropic", "claude:with-colon")),
    ],
)
def test_split_model(model, parts):
    assert split_model(model) == parts
