"""The Responses provider through the real SDK, against a local /v1/responses server.

Nothing is mocked: the SDK sends real HTTP to tests/fake_openai_responses.py, which
answers with scripted JSON or SSE, records the exact wire JSON it received, and
rejects what the API would reject. The last test runs an agent of this module end
to end on the embedded runtime.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from providers.errors import ContextLengthExceeded, Fatal, Retryable
from providers.openai_responses import OpenAIResponsesProvider, to_wire
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    ModelResponse,
    OpaqueItem,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from tasks import Agent, client, tool
from tests import fake_openai_responses as wire
from tests.fake_openai_responses import FakeOpenAIResponses

API_KEY = "sk-test-not-a-real-key"
ADD_SPEC = ToolSpec(
    "add",
    "Add two integers.",
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
)
THOUGHT = wire.reasoning("rs_0a1b", summary="Two sums, so two add calls.")


@pytest.fixture
def server() -> Iterator[FakeOpenAIResponses]:
    with FakeOpenAIResponses() as fake:
        yield fake


@pytest.fixture
def provider(
    server: FakeOpenAIResponses, monkeypatch: pytest.MonkeyPatch
) -> OpenAIResponsesProvider:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    return OpenAIResponsesProvider()


def ask(*messages: Message, tools: tuple[ToolSpec, ...] = (), **settings: Any) -> ModelRequest:
    return ModelRequest(
        model="openai-responses:fake-model",
        instructions="Add things up.",
        messages=messages or (Message.text("user", "What is 1 + 2?"),),
        tools=tools,
        settings=settings,
    )


def streamed(
    provider: OpenAIResponsesProvider, request: ModelRequest
) -> tuple[ModelResponse, list[Delta]]:
    deltas: list[Delta] = []
    return provider.complete(request, deltas.append), deltas


def user_text(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "input_text", "text": text}]}


# --- answers ----------------------------------------------------------------------------------


def test_a_non_streamed_text_answer_comes_back_and_the_wire_json_is_exact(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(wire.answer(wire.message("3"), usage=wire.usage(21, 1)))

    response = provider.complete(ask())

    assert response.message == Message("assistant", (TextPart("3"),))
    assert response.finish_reason == "stop"
    assert response.usage == Usage(input_tokens=21, output_tokens=1)
    assert response.model == "openai-responses:fake-model"
    [received] = server.requests
    assert received.path == "/v1/responses"
    assert received.body == {
        "model": "fake-model",
        "instructions": "Add things up.",
        "input": [user_text("What is 1 + 2?")],
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }
    assert received.headers["authorization"] == f"Bearer {API_KEY}"


def test_a_streamed_answer_passes_each_text_delta_on(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(wire.text_answer("1 + 2", " is", " 3."))

    response, deltas = streamed(provider, ask())

    assert deltas == [Delta("text", "1 + 2"), Delta("text", " is"), Delta("text", " 3.")]
    assert response.message == Message("assistant", (TextPart("1 + 2 is 3."),))
    assert response.finish_reason == "stop"
    assert server.requests[0].body["stream"] is True


def test_three_parallel_function_calls_streamed_with_interleaved_fragments_are_assembled(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(
        wire.answer(
            wire.function_call("call_a", "add", '{"a": 1, "b": 2}'),
            wire.function_call("call_b", "add", '{"a": 3, "b": 4}'),
            wire.function_call("call_c", "add", '{"a": 5, "b": 6}'),
            pieces=(
                (0, '{"a": '),
                (1, '{"a": 3,'),
                (2, '{"a": 5, '),
                (0, '1, "b": 2}'),
                (2, '"b": 6}'),
                (1, ' "b": 4}'),
            ),
        )
    )

    response, deltas = streamed(provider, ask(tools=(ADD_SPEC,), parallel_tool_calls=True))

    assert response.finish_reason == "tool_calls"
    assert response.message.tool_calls == (
        ToolCall("call_a", "add", '{"a": 1, "b": 2}'),
        ToolCall("call_b", "add", '{"a": 3, "b": 4}'),
        ToolCall("call_c", "add", '{"a": 5, "b": 6}'),
    )
    by_index = {i: "".join(d.text for d in deltas if d.index == i) for i in range(3)}
    assert by_index == {0: '{"a": 1, "b": 2}', 1: '{"a": 3, "b": 4}', 2: '{"a": 5, "b": 6}'}
    assert {d.kind for d in deltas} == {"tool_arguments"}
    body = server.requests[0].body
    assert body["parallel_tool_calls"] is True
    assert [t["name"] for t in body["tools"]] == ["add"]


def test_the_reasoning_item_goes_back_unchanged_before_its_calls_and_then_their_outputs(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(
        wire.answer(
            THOUGHT,
            wire.function_call("call_a", "add", '{"a": 1, "b": 2}'),
            wire.function_call("call_b", "add", '{"a": 3, "b": 4}'),
            usage=wire.usage(50, 30, reasoning=24),
        ),
        wire.text_answer("3 and 7."),
    )
    question = Message.text("user", "What are 1 + 2 and 3 + 4?")

    first, deltas = streamed(provider, ask(question, tools=(ADD_SPEC,), reasoning_summary="auto"))
    results = Message("tool", (ToolResult("call_a", "add", "3"), ToolResult("call_b", "add", "7")))
    second, _ = streamed(provider, ask(question, first.message, results, tools=(ADD_SPEC,)))

    assert first.message.parts[0] == OpaqueItem("openai-responses", THOUGHT)
    assert Delta("thinking", "Two sums, so two add calls.") in deltas
    assert first.usage.reasoning_tokens == 24
    assert server.requests[0].body["reasoning"] == {"summary": "auto"}
    assert server.requests[1].body["input"] == [
        user_text("What are 1 + 2 and 3 + 4?"),
        THOUGHT,
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "add",
            "arguments": '{"a": 1, "b": 2}',
        },
        {
            "type": "function_call",
            "call_id": "call_b",
            "name": "add",
            "arguments": '{"a": 3, "b": 4}',
        },
        {"type": "function_call_output", "call_id": "call_a", "output": "3"},
        {"type": "function_call_output", "call_id": "call_b", "output": "7"},
    ]
    assert server.requests[1].body["input"][1]["encrypted_content"] == wire.ENCRYPTED
    assert second.message.joined_text == "3 and 7."


def test_a_streamed_request_with_history_and_tools_is_sent_exactly_as_to_wire_writes_it(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    # The adapter hands the body to the SDK as extra_body, past its request transform.
    server.reply(wire.text_answer("10"))
    call = ToolCall("call_1", "add", '{"a": 1, "b": 2}')
    request = ask(
        Message.text("user", "What is 1 + 2, plus 7?"),
        Message("assistant", (OpaqueItem("openai-responses", THOUGHT), TextPart("Adding."), call)),
        Message("tool", (ToolResult("call_1", "add", "3"),)),
        tools=(ADD_SPEC,),
        reasoning_effort="low",
        parallel_tool_calls=False,
        max_output_tokens=50,
    )

    streamed(provider, request)

    expected = {**to_wire(request), "stream": True}
    assert server.requests[0].body == expected
    kinds = [item.get("type", item.get("role")) for item in expected["input"]]
    assert kinds == ["user", "reasoning", "assistant", "function_call", "function_call_output"]
    assert expected["reasoning"] == {"effort": "low"} and expected["max_output_tokens"] == 50


def test_a_conversation_that_came_from_anthropic_loses_its_thinking_and_still_runs(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(wire.answer(wire.message("Still 3.")))
    history = (
        Message.text("user", "What is 1 + 2?"),
        Message(
            "assistant",
            (
                Thinking("Simple addition.", signature="EqQBCkYIBxgC…", provider="anthropic"),
                OpaqueItem("anthropic", {"type": "redacted_thinking", "data": "EmwKAhgB…"}),
                TextPart("Let me add."),
                ToolCall("toolu_01A", "add", '{"a": 1, "b": 2}'),
            ),
        ),
        Message("tool", (ToolResult("toolu_01A", "add", "3"),)),
        Message.text("assistant", "3."),
        Message.text("user", "Are you sure?"),
    )

    response = provider.complete(ask(*history, tools=(ADD_SPEC,)))

    assert response.message.joined_text == "Still 3."
    assert server.requests[0].body["input"] == [
        user_text("What is 1 + 2?"),
        {"role": "assistant", "content": [{"type": "output_text", "text": "Let me add."}]},
        {
            "type": "function_call",
            "call_id": "toolu_01A",
            "name": "add",
            "arguments": '{"a": 1, "b": 2}',
        },
        {"type": "function_call_output", "call_id": "toolu_01A", "output": "3"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "3."}]},
        user_text("Are you sure?"),
    ]


def test_usage_details_are_read_and_cached_tokens_stay_in_the_input_count(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    counts = wire.usage(1200, 80, cached=1024, reasoning=64)
    server.reply(
        wire.answer(wire.message("ok"), usage=counts), wire.text_answer("ok", usage=counts)
    )
    expected = Usage(input_tokens=1200, output_tokens=80, cached_tokens=1024, reasoning_tokens=64)
    assert provider.complete(ask()).usage == expected
    assert streamed(provider, ask())[0].usage == expected


FINISH_TABLE = [
    ("refusal", wire.answer(wire.refusal("I can't help with that.")), "refusal", "I can't help"),
    (
        "length",
        wire.text_answer(
            "It was the best of", status="incomplete", incomplete_reason="max_output_tokens"
        ),
        "length",
        "best of",
    ),
    (
        "content_filter",
        wire.answer(status="incomplete", incomplete_reason="content_filter"),
        "content_filter",
        "",
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "streamed"])
@pytest.mark.parametrize(
    ("reply", "finish", "text"),
    [(r, f, t) for _, r, f, t in FINISH_TABLE],
    ids=[name for name, _, _, _ in FINISH_TABLE],
)
def test_refusal_length_and_content_filter_finish_as_such(
    server: FakeOpenAIResponses,
    provider: OpenAIResponsesProvider,
    reply: wire.Answer,
    finish: str,
    text: str,
    stream: bool,
) -> None:
    server.reply(reply)
    response = streamed(provider, ask())[0] if stream else provider.complete(ask())
    assert response.finish_reason == finish
    assert text in response.message.joined_text


# --- errors -----------------------------------------------------------------------------------


def test_a_429_with_retry_after_is_retryable_after_that_many_seconds(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(wire.error(429, "Rate limit reached for requests", headers={"retry-after": "7"}))
    with pytest.raises(Retryable) as caught:
        provider.complete(ask())
    assert caught.value.retry_after == 7.0
    assert (caught.value.provider, caught.value.model) == ("openai-responses", "fake-model")


@pytest.mark.parametrize("status", [408, 409, 500, 503])
def test_timeouts_conflicts_and_server_errors_are_retryable_after_exactly_one_attempt(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider, status: int
) -> None:
    server.reply(wire.error(status, "The server had an error while processing your request."))
    with pytest.raises(Retryable, match=f"HTTP {status}"):
        streamed(provider, ask())
    [attempt] = server.requests  # max_retries=0: the SDK never retried on its own
    assert attempt.headers["x-stainless-retry-count"] == "0"


def test_a_400_is_fatal_and_names_the_provider_the_model_and_the_message(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(
        wire.error(400, "Invalid value for 'temperature': 7 is greater than the maximum of 2.")
    )
    with pytest.raises(Fatal) as caught:
        provider.complete(ask(temperature=7))
    error = caught.value
    assert not isinstance(error, (Retryable, ContextLengthExceeded))
    assert "openai-responses model 'fake-model'" in str(error)
    assert "greater than the maximum of 2" in str(error)
    assert (error.provider, error.model) == ("openai-responses", "fake-model")


@pytest.mark.parametrize(
    "reply",
    [
        wire.error(
            400,
            "Your input exceeds the context window of this model.",
            code="context_length_exceeded",
            param="input",
        ),
        wire.error(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130512 tokens. Please reduce the length of the messages.",
        ),
    ],
    ids=["by code", "by message"],
)
def test_context_length_exceeded_is_its_own_fatal_error(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider, reply: wire.Error
) -> None:
    server.reply(reply)
    with pytest.raises(ContextLengthExceeded, match="fake-model"):
        provider.complete(ask())


def test_a_failed_response_mid_stream_is_classified_by_its_error_code(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(
        wire.text_answer("Par", status="failed", error={"code": "server_error", "message": "oops"}),
        wire.answer(status="failed", error={"code": "invalid_prompt", "message": "Flagged."}),
    )
    with pytest.raises(Retryable, match="oops"):
        streamed(provider, ask())
    with pytest.raises(Fatal, match="Flagged"):
        streamed(provider, ask())


@pytest.mark.parametrize(
    ("event", "raised"),
    [
        (wire.error_event("The server had an error.", "server_error"), Retryable),
        (
            wire.error_event("Too long for this model.", "context_length_exceeded"),
            ContextLengthExceeded,
        ),
        (  # the shape the API has also been seen to send: the SDK raises it itself
            {"error": {"type": "invalid_request_error", "code": None, "message": "Bad input."}},
            Fatal,
        ),
    ],
    ids=["server error", "context length", "a nested error object"],
)
def test_an_error_event_mid_stream_is_classified(
    server: FakeOpenAIResponses,
    provider: OpenAIResponsesProvider,
    event: dict[str, Any],
    raised: type[Exception],
) -> None:
    server.reply(wire.text_answer("Par", "tial", error_event=event))
    with pytest.raises(raised) as caught:
        streamed(provider, ask())
    assert type(caught.value) is raised
    assert caught.value.provider == "openai-responses"


def test_a_stream_cut_off_mid_body_is_retryable(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(wire.text_answer("half an an", cut=True))
    with pytest.raises(Retryable):
        streamed(provider, ask())


def test_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with pytest.raises(Retryable, match="connection failed"):
        OpenAIResponsesProvider().complete(ask(base_url=f"http://127.0.0.1:{port}/v1"))


def test_a_read_timeout_from_settings_is_retryable(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    server.reply(wire.Hang(1.0, wire.text_answer("too late")))
    with pytest.raises(Retryable, match="timed out"):
        provider.complete(ask(timeout=0.2))
    assert server.requests[0].headers["x-stainless-read-timeout"] == "0.2"


@pytest.mark.parametrize("timeout", ["soon", -1, 0.0])
def test_a_bad_timeout_setting_is_fatal(provider: OpenAIResponsesProvider, timeout: object) -> None:
    with pytest.raises(Fatal, match="openai-responses: model_settings\\['timeout'\\]"):
        provider.complete(ask(timeout=timeout))


def test_a_missing_api_key_is_fatal_and_says_which_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Fatal, match="OPENAI_API_KEY"):
        OpenAIResponsesProvider().complete(ask())


# --- configuration and clients ----------------------------------------------------------------


def test_the_base_url_and_key_variable_come_from_settings_before_the_environment(
    server: FakeOpenAIResponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/nowhere")
    monkeypatch.setenv("TEAM_OPENAI_KEY", "sk-team-key")
    server.reply(wire.answer(wire.message("from settings")))
    request = ask(base_url=server.url, api_key_env="TEAM_OPENAI_KEY")
    assert OpenAIResponsesProvider().complete(request).message.joined_text == "from settings"
    assert server.requests[0].headers["authorization"] == "Bearer sk-team-key"


def test_one_client_with_sdk_retries_off_is_reused(provider: OpenAIResponsesProvider) -> None:
    sdk = provider.client({})
    assert sdk.max_retries == 0
    assert provider.client({}) is sdk


def test_streamed_calls_one_after_another_reuse_one_connection(
    server: FakeOpenAIResponses, provider: OpenAIResponsesProvider
) -> None:
    for n in range(3):
        server.reply(wire.text_answer(f"answer {n}"))
        response, _ = streamed(provider, ask())
        assert response.message.joined_text == f"answer {n}"

    assert len({r.peer for r in server.requests}) == 1


# --- end to end through the embedded runtime --------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


responses_adder = Agent(
    name="responses-adder",
    instructions="Add things up with the add tool.",
    model="openai-responses:fake-model",
    tools=(add,),
    model_settings={"reasoning_effort": "low"},
)


def test_an_agent_on_responses_runs_model_then_parallel_tools_then_model_to_an_answer(
    embedded: dict[str, str], server: FakeOpenAIResponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPWISE_AGENTS", "tests.test_openai_responses_provider")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server.reply(
        wire.answer(
            THOUGHT,
            wire.function_call("call_12", "add", '{"a": 1, "b": 2}'),
            wire.function_call("call_34", "add", '{"a": 3, "b": 4}'),
            pieces=(
                (0, THOUGHT["summary"][0]["text"]),
                (1, '{"a": 1, '),
                (2, '{"a": 3, "b": 4}'),
                (1, '"b": 2}'),
            ),
            usage=wire.usage(40, 20, reasoning=12),
        ),
        wire.text_answer("1 + 2 = 3", " and 3 + 4 = 7.", usage=wire.usage(90, 10, cached=32)),
    )

    run_id = client.start_run("responses-adder", "What are 1 + 2 and 3 + 4?")
    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "1 + 2 = 3 and 3 + 4 = 7."
    assert run.usage == Usage(
        input_tokens=130, output_tokens=30, cached_tokens=32, reasoning_tokens=12
    )
    first, second = server.requests
    assert first.body["instructions"] == "Add things up with the add tool."
    assert first.body["input"] == [user_text("What are 1 + 2 and 3 + 4?")]
    assert first.body["reasoning"] == {"effort": "low"}
    assert [t["name"] for t in first.body["tools"]] == ["add"]
    assert second.body["input"][1:] == [
        THOUGHT,
        {
            "type": "function_call",
            "call_id": "call_12",
            "name": "add",
            "arguments": '{"a": 1, "b": 2}',
        },
        {
            "type": "function_call",
            "call_id": "call_34",
            "name": "add",
            "arguments": '{"a": 3, "b": 4}',
        },
        {"type": "function_call_output", "call_id": "call_12", "output": "3"},
        {"type": "function_call_output", "call_id": "call_34", "output": "7"},
    ]
