"""The OpenAI provider through the real SDK, against a local Chat Completions server.

Nothing is mocked: the SDK sends real HTTP to tests/fake_openai.py, which answers
with scripted JSON or SSE and records the exact wire JSON it received. The last
test runs an agent of this module end to end on the embedded runtime.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest

from providers.base import POOL_SHARDS
from providers.errors import ContextLengthExceeded, Fatal, Retryable
from providers.openai import OpenAIProvider, to_wire
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    TextPart,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from tasks import Agent, client, tool
from tests import fake_openai as wire
from tests.fake_openai import FakeOpenAI
from tests.in_flight import all_in_flight

API_KEY = "sk-test-not-a-real-key"
ADD_SPEC = ToolSpec(
    "add",
    "Add two integers.",
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def provider(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> OpenAIProvider:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    return OpenAIProvider()


def ask(
    text: str = "What is 1 + 2?", *, tools: tuple[ToolSpec, ...] = (), **settings: Any
) -> ModelRequest:
    return ModelRequest(
        model="openai:fake-model",
        instructions="Add things up.",
        messages=(Message.text("user", text),),
        tools=tools,
        settings=settings,
    )


def streamed(provider: OpenAIProvider, request: ModelRequest) -> tuple[Any, list[Delta]]:
    deltas: list[Delta] = []
    return provider.complete(request, deltas.append), deltas


# --- non-streaming ----------------------------------------------------------------------------


def test_a_non_streamed_text_answer_comes_back_and_the_wire_json_is_exact(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(wire.completion("3", usage=wire.token_usage(21, 1)))

    response = provider.complete(ask())

    assert response.message == Message("assistant", (TextPart("3"),))
    assert response.finish_reason == "stop"
    assert response.usage == Usage(input_tokens=21, output_tokens=1)
    assert response.model == "openai:fake-model"
    [received] = server.requests
    assert received.path == "/v1/chat/completions"
    assert received.body == {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "Add things up."},
            {"role": "user", "content": "What is 1 + 2?"},
        ],
    }
    assert received.headers["authorization"] == f"Bearer {API_KEY}"


def test_non_streamed_tool_calls_come_back_with_raw_arguments(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(
        wire.completion(
            None,
            tool_calls=[
                wire.tool_call("call_1", "add", '{"a": 1, "b": 2}'),
                wire.tool_call("call_2", "add", '{"a":3,"b":4}'),
            ],
            finish_reason="tool_calls",
        )
    )

    response = provider.complete(ask(tools=(ADD_SPEC,), parallel_tool_calls=True))

    assert response.finish_reason == "tool_calls"
    assert response.message.tool_calls == (
        ToolCall("call_1", "add", '{"a": 1, "b": 2}'),
        ToolCall("call_2", "add", '{"a":3,"b":4}'),
    )
    body = server.requests[0].body
    assert body["parallel_tool_calls"] is True
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": ADD_SPEC.parameters,
            },
        }
    ]


@pytest.mark.parametrize(
    ("reply", "finish", "text"),
    [
        (wire.completion(None, refusal="I can't help with that."), "refusal", "I can't help"),
        (wire.completion("It was the best of", finish_reason="length"), "length", "best of"),
        (wire.completion(None, finish_reason="content_filter"), "content_filter", ""),
    ],
    ids=["refusal", "length", "content_filter"],
)
def test_refusal_length_and_content_filter_finish_as_such(
    server: FakeOpenAI, provider: OpenAIProvider, reply: wire.Completion, finish: str, text: str
) -> None:
    server.reply(reply)
    response = provider.complete(ask())
    assert response.finish_reason == finish
    assert text in response.message.joined_text


# --- streaming --------------------------------------------------------------------------------


def test_a_streamed_answer_passes_each_text_delta_and_asks_for_usage(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(wire.Stream(wire.text_deltas("1 + 2", " is", " 3.")))

    response, deltas = streamed(provider, ask())

    assert deltas == [Delta("text", "1 + 2"), Delta("text", " is"), Delta("text", " 3.")]
    assert response.message == Message("assistant", (TextPart("1 + 2 is 3."),))
    assert response.finish_reason == "stop"
    body = server.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_a_streamed_request_with_history_and_tools_is_sent_exactly_as_to_wire_writes_it(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    # The adapter hands the body to the SDK as extra_body, past its request transform.
    server.reply(wire.Stream(wire.text_deltas("10")))
    call = ToolCall("call_1", "add", '{"a": 1, "b": 2}')
    request = ModelRequest(
        model="openai:fake-model",
        instructions="Add things up.",
        messages=(
            Message.text("user", "What is 1 + 2, plus 7?"),
            Message("assistant", (TextPart("Adding."), call)),
            Message("tool", (ToolResult("call_1", "add", "3"),)),
        ),
        tools=(ADD_SPEC,),
        settings={"temperature": 0.2, "parallel_tool_calls": False, "max_tokens": 50},
    )

    streamed(provider, request)

    expected = {**to_wire(request), "stream": True, "stream_options": {"include_usage": True}}
    assert server.requests[0].body == expected
    assert [m["role"] for m in expected["messages"]] == ["system", "user", "assistant", "tool"]
    assert expected["temperature"] == 0.2 and expected["tools"][0]["function"]["name"] == "add"


def test_three_parallel_tool_calls_streamed_with_interleaved_fragments_are_assembled(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(
        wire.Stream(
            (
                wire.call_start(0, "call_a", "add"),
                wire.call_start(1, "call_b", "add"),
                wire.call_arguments(0, '{"a": '),
                wire.call_start(2, "call_c", "add"),
                wire.call_arguments(2, '{"a": 5, '),
                wire.call_arguments(1, '{"a": 3,'),
                wire.call_arguments(0, '1, "b": 2}'),
                wire.call_arguments(2, '"b": 6}'),
                wire.call_arguments(1, ' "b": 4}'),
            ),
            finish_reason="tool_calls",
        )
    )

    response, deltas = streamed(provider, ask(tools=(ADD_SPEC,)))

    assert response.finish_reason == "tool_calls"
    assert response.message.tool_calls == (
        ToolCall("call_a", "add", '{"a": 1, "b": 2}'),
        ToolCall("call_b", "add", '{"a": 3, "b": 4}'),
        ToolCall("call_c", "add", '{"a": 5, "b": 6}'),
    )
    by_index = {i: "".join(d.text for d in deltas if d.index == i) for i in range(3)}
    assert by_index == {0: '{"a": 1, "b": 2}', 1: '{"a": 3, "b": 4}', 2: '{"a": 5, "b": 6}'}
    assert {d.kind for d in deltas} == {"tool_arguments"}


def test_the_include_usage_chunk_is_read(server: FakeOpenAI, provider: OpenAIProvider) -> None:
    server.reply(
        wire.Stream(
            wire.text_deltas("ok"), usage=wire.token_usage(1200, 80, cached=1024, reasoning=64)
        )
    )
    response, _ = streamed(provider, ask())
    assert response.usage == Usage(
        input_tokens=1200, output_tokens=80, cached_tokens=1024, reasoning_tokens=64
    )


@pytest.mark.parametrize(
    ("stream", "finish"),
    [
        (wire.Stream(({"refusal": "I can't"}, {"refusal": " help."})), "refusal"),
        (wire.Stream(wire.text_deltas("It was"), finish_reason="length"), "length"),
        (wire.Stream((), finish_reason="content_filter"), "content_filter"),
    ],
    ids=["refusal", "length", "content_filter"],
)
def test_streamed_refusal_length_and_content_filter_finish_as_such(
    server: FakeOpenAI, provider: OpenAIProvider, stream: wire.Stream, finish: str
) -> None:
    server.reply(stream)
    response, _ = streamed(provider, ask())
    assert response.finish_reason == finish


# --- errors -----------------------------------------------------------------------------------


def test_a_429_with_retry_after_is_retryable_after_that_many_seconds(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(wire.error(429, "Rate limit reached for requests", headers={"retry-after": "7"}))
    with pytest.raises(Retryable) as caught:
        provider.complete(ask())
    assert caught.value.retry_after == 7.0
    assert caught.value.provider == "openai"
    assert caught.value.model == "fake-model"


def test_retry_after_ms_takes_precedence_over_retry_after(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    headers = {"retry-after-ms": "1250", "retry-after": "2"}
    server.reply(wire.error(429, "Rate limit reached for tokens", headers=headers))
    with pytest.raises(Retryable) as caught:
        provider.complete(ask())
    assert caught.value.retry_after == 1.25


def test_retry_after_as_an_http_date_is_seconds_from_now(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    later = formatdate(time.time() + 30, usegmt=True)
    server.reply(wire.error(429, "slow down", headers={"retry-after": later}))
    with pytest.raises(Retryable) as caught:
        provider.complete(ask())
    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 31


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
def test_timeouts_conflicts_and_server_errors_are_retryable_after_exactly_one_attempt(
    server: FakeOpenAI, provider: OpenAIProvider, status: int
) -> None:
    server.reply(wire.error(status, "The server had an error while processing your request."))
    with pytest.raises(Retryable, match=f"HTTP {status}") as caught:
        provider.complete(ask())
    assert caught.value.retry_after is None
    [attempt] = server.requests  # max_retries=0: the SDK never retried on its own
    assert attempt.headers["x-stainless-retry-count"] == "0"


def test_a_500_mid_stream_setup_is_retryable_after_one_attempt(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(wire.error(500, "The server had an error while processing your request."))
    with pytest.raises(Retryable):
        streamed(provider, ask())
    assert len(server.requests) == 1


def test_a_400_is_fatal_and_names_the_provider_the_model_and_the_message(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(
        wire.error(400, "Invalid value for 'temperature': 7 is greater than the maximum of 2.")
    )
    with pytest.raises(Fatal) as caught:
        provider.complete(ask(temperature=7))
    error = caught.value
    assert not isinstance(error, (Retryable, ContextLengthExceeded))
    assert "openai" in str(error)
    assert "fake-model" in str(error)
    assert "greater than the maximum of 2" in str(error)
    assert (error.provider, error.model) == ("openai", "fake-model")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Incorrect API key provided: sk-test-***-key."),
        (403, "You are not allowed to sample from this model"),
        (404, "The model `fake-model` does not exist or you do not have access to it."),
        (422, "Unprocessable entity"),
    ],
)
def test_auth_permission_not_found_and_unprocessable_are_fatal(
    server: FakeOpenAI, provider: OpenAIProvider, status: int, message: str
) -> None:
    server.reply(wire.error(status, message))
    with pytest.raises(Fatal, match=f"HTTP {status}") as caught:
        provider.complete(ask())
    assert not isinstance(caught.value, Retryable)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "reply",
    [
        wire.error(
            400,
            "Your input exceeds the context window of this model.",
            code="context_length_exceeded",
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
    server: FakeOpenAI, provider: OpenAIProvider, reply: wire.Error
) -> None:
    server.reply(reply)
    with pytest.raises(ContextLengthExceeded, match="fake-model"):
        provider.complete(ask())


def test_an_error_event_mid_stream_is_classified_the_same_way(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(
        wire.Stream(
            wire.text_deltas("Par", "tial"),
            error=wire.error_body(
                "The server had an error processing your request.", "server_error"
            ),
        ),
        wire.Stream(
            wire.text_deltas("x"),
            error=wire.error_body(
                "This model's maximum context length is 8192 tokens.",
                code="context_length_exceeded",
            ),
        ),
    )
    with pytest.raises(Retryable, match="server had an error"):
        streamed(provider, ask())
    with pytest.raises(ContextLengthExceeded):
        streamed(provider, ask())


def test_a_stream_cut_off_mid_body_is_retryable(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(wire.Stream(wire.text_deltas("half an an"), cut=True))
    with pytest.raises(Retryable):
        streamed(provider, ask())


def test_a_stream_cut_off_after_done_still_answers(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(wire.Stream(wire.text_deltas("whole"), cut_after_done=True))

    response, _ = streamed(provider, ask())

    assert response.message.joined_text == "whole"
    assert response.finish_reason == "stop"


def test_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    request = ask(base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(Retryable, match="connection failed"):
        OpenAIProvider().complete(request)


def test_a_read_timeout_from_settings_is_retryable(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.reply(wire.Hang(1.0, wire.completion("too late")))
    with pytest.raises(Retryable, match="timed out"):
        provider.complete(ask(timeout=0.2))
    assert server.requests[0].headers["x-stainless-read-timeout"] == "0.2"


def test_a_non_json_error_page_from_a_proxy_is_classified_by_its_status(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 2000 + "</body></html>"
    server.reply(wire.Error(502, page), wire.Error(404, "<html>Not Found</html>"))
    with pytest.raises(Retryable, match="502 Bad Gateway") as caught:
        provider.complete(ask())
    assert len(str(caught.value)) < 700  # the page is cut short
    with pytest.raises(Fatal, match="Not Found"):
        provider.complete(ask())


@pytest.mark.parametrize("timeout", ["soon", -1, 0.0])
def test_a_bad_timeout_setting_is_fatal(provider: OpenAIProvider, timeout: object) -> None:
    with pytest.raises(Fatal, match="timeout"):
        provider.complete(ask(timeout=timeout))


def test_a_missing_api_key_is_fatal_and_says_which_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Fatal, match="OPENAI_API_KEY"):
        OpenAIProvider().complete(ask())


# --- configuration and clients ----------------------------------------------------------------


def test_the_base_url_comes_from_openai_base_url(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    server.reply(wire.completion("from env"))
    assert OpenAIProvider().complete(ask()).message.joined_text == "from env"
    assert len(server.requests) == 1


def test_the_base_url_and_key_variable_come_from_settings_before_the_environment(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/nowhere")
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("TEAM_OPENAI_KEY", "sk-team-key")
    server.reply(wire.completion("from settings"))
    request = ask(base_url=server.url, api_key_env="TEAM_OPENAI_KEY")
    assert OpenAIProvider().complete(request).message.joined_text == "from settings"
    assert server.requests[0].headers["authorization"] == "Bearer sk-team-key"


def test_one_client_is_reused_across_calls_and_threads(
    server: FakeOpenAI, provider: OpenAIProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = 8
    server.reply(*(wire.completion(f"answer {i}") for i in range(workers)))
    start = threading.Barrier(workers)
    clients: list[object] = []
    answers: list[str] = []
    failures: list[BaseException] = []

    def call() -> None:
        try:
            start.wait(5)
            clients.append(provider.client({}))
            answers.append(provider.complete(ask()).message.joined_text)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=call) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert failures == []
    assert sorted(answers) == sorted(f"answer {i}" for i in range(workers))
    assert len({id(c) for c in clients}) == 1
    assert provider.client({}) is clients[0]
    assert provider.client({"base_url": server.url}) is clients[0]
    monkeypatch.setenv("OTHER_KEY", "sk-other")
    assert provider.client({"api_key_env": "OTHER_KEY"}) is not clients[0]
    assert provider.client({"base_url": "http://127.0.0.1:9/v1"}) is not clients[0]


def test_the_connections_of_more_calls_in_flight_than_the_sdk_keeps_stay_open_for_the_next(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    calls = 160  # the SDK's own client keeps 100 connections between calls
    for _ in range(2):
        gate = threading.Event()
        server.reply(*(wire.Gated(gate, wire.completion(f"answer {i}")) for i in range(calls)))
        answers = all_in_flight(
            calls, lambda: provider.complete(ask()), lambda: len(server.requests), gate
        )
        texts = sorted(a.message.joined_text for a in answers)
        assert texts == sorted(f"answer {i}" for i in range(calls))

    # The second round's new threads fall on the pools in another order than the
    # first's: a pool may open one connection more than it kept. Keeping only the SDK's
    # 100 would have opened 60 more.
    assert calls <= len({r.peer for r in server.requests}) <= calls + POOL_SHARDS


def test_calls_from_many_threads_are_spread_over_the_client_s_connection_pools(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    calls = 2 * POOL_SHARDS
    gate = threading.Event()
    server.reply(*(wire.Gated(gate, wire.completion(f"answer {i}")) for i in range(calls)))

    answers = all_in_flight(
        calls, lambda: provider.complete(ask()), lambda: len(server.requests), gate
    )

    assert sorted(a.message.joined_text for a in answers) == sorted(
        f"answer {i}" for i in range(calls)
    )
    assert provider.client({})._client._transport.pools == POOL_SHARDS


def test_streamed_calls_one_after_another_reuse_one_connection(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    for n in range(3):
        server.reply(wire.Stream(wire.text_deltas(f"answer {n}"), usage=wire.token_usage()))
        response, _ = streamed(provider, ask())
        assert response.message.joined_text == f"answer {n}"
    server.reply(wire.completion("plain"))
    assert provider.complete(ask()).message.joined_text == "plain"

    assert len({r.peer for r in server.requests}) == 1


def test_sdk_retries_are_off_on_the_client(provider: OpenAIProvider) -> None:
    assert provider.client({}).max_retries == 0


# --- end to end through the embedded runtime --------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


openai_adder = Agent(
    name="openai-adder",
    instructions="Add things up with the add tool.",
    model="openai:fake-model",
    tools=(add,),
)


def test_an_agent_on_openai_runs_model_then_parallel_tools_then_model_to_an_answer(
    embedded: dict[str, str], server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPWISE_AGENTS", "tests.test_openai_provider")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server.reply(
        wire.Stream(
            (
                wire.call_start(0, "call_12", "add"),
                wire.call_start(1, "call_34", "add"),
                wire.call_arguments(1, '{"a": 3, "b": 4}'),
                wire.call_arguments(0, '{"a": 1, "b": 2}'),
            ),
            finish_reason="tool_calls",
        ),
        wire.Stream(wire.text_deltas("1 + 2 = 3", " and 3 + 4 = 7.")),
    )

    run_id = client.start_run("openai-adder", "What are 1 + 2 and 3 + 4?")
    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "1 + 2 = 3 and 3 + 4 = 7."
    assert run.usage == Usage(input_tokens=20, output_tokens=10)
    first, second = server.requests
    assert first.body["messages"] == [
        {"role": "system", "content": "Add things up with the add tool."},
        {"role": "user", "content": "What are 1 + 2 and 3 + 4?"},
    ]
    assert [t["function"]["name"] for t in first.body["tools"]] == ["add"]
    assert second.body["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_12",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                },
                {
                    "id": "call_34",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_12", "content": "3"},
        {"role": "tool", "tool_call_id": "call_34", "content": "7"},
    ]
