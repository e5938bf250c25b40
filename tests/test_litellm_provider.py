"""The litellm provider through real LiteLLM, against a local Chat Completions server.

Nothing of LiteLLM is mocked: it sends `openai/<model>` requests over real HTTP to
tests/fake_openai.py, which answers with scripted JSON or SSE and records the exact
wire JSON. Thinking and thought signatures (Anthropic, Gemini) are in
tests/test_litellm_reasoning.py.
"""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpcore._sync.connection_pool import PoolByteStream

from providers.errors import ContextLengthExceeded, Fatal, Retryable
from providers.litellm import LiteLLMProvider
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from tests import fake_anthropic as claude
from tests import fake_openai as wire
from tests.fake_anthropic import FakeAnthropic
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "LITELLM_TEST_KEY"
API_KEY = "sk-test-not-a-real-key"
MODEL = "openai/gpt-4.1"
CLAUDE = "anthropic/claude-sonnet-4-5"
ADD = ToolSpec(
    "add",
    "Add two integers.",
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
)


@pytest.fixture(scope="module")
def provider() -> LiteLLMProvider:
    return LiteLLMProvider()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with FakeOpenAI() as fake:
        yield fake


def ask(
    server: FakeOpenAI,
    *messages: Message,
    tools: tuple[ToolSpec, ...] = (),
    model: str = MODEL,
    **settings: Any,
) -> ModelRequest:
    return ModelRequest(
        f"litellm:{model}",
        "Add things up.",
        messages or (Message.text("user", "What is 1 + 2?"),),
        tools,
        {"base_url": server.url, "api_key_env": KEY_ENV, **settings},
    )


def streamed(provider: LiteLLMProvider, request: ModelRequest) -> tuple[ModelResponse, list[Delta]]:
    deltas: list[Delta] = []
    return provider.complete(request, deltas.append), deltas


def complete(provider: LiteLLMProvider, request: ModelRequest, stream: bool) -> ModelResponse:
    return streamed(provider, request)[0] if stream else provider.complete(request)


# --- answers ----------------------------------------------------------------------------------


def test_a_non_streamed_text_answer_comes_back_and_the_wire_json_is_exact(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    server.reply(wire.completion("3", usage=wire.token_usage(21, 1)))

    response = provider.complete(ask(server))

    assert response.message == Message("assistant", (TextPart("3"),))
    assert response.finish_reason == "stop"
    assert response.usage == Usage(input_tokens=21, output_tokens=1)
    assert response.model == "litellm:openai/gpt-4.1"
    [received] = server.requests
    assert received.body == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "Add things up."},
            {"role": "user", "content": "What is 1 + 2?"},
        ],
    }
    assert received.headers["authorization"] == f"Bearer {API_KEY}"


def test_non_streamed_parallel_tool_calls_keep_their_ids_order_and_raw_arguments(
    server: FakeOpenAI, provider: LiteLLMProvider
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

    response = provider.complete(ask(server, tools=(ADD,), parallel_tool_calls=True))

    assert response.finish_reason == "tool_calls"
    assert response.message.parts == (
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
                "parameters": ADD.parameters,
            },
        }
    ]


def test_a_streamed_answer_passes_each_text_delta_and_asks_for_usage(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    server.reply(wire.Stream(wire.text_deltas("1 + 2", " is", " 3.")))

    response, deltas = streamed(provider, ask(server))

    assert deltas == [Delta("text", "1 + 2"), Delta("text", " is"), Delta("text", " 3.")]
    assert response.message == Message("assistant", (TextPart("1 + 2 is 3."),))
    assert response.finish_reason == "stop"
    body = server.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_three_parallel_tool_calls_streamed_with_interleaved_fragments_are_assembled(
    server: FakeOpenAI, provider: LiteLLMProvider
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

    response, deltas = streamed(provider, ask(server, tools=(ADD,)))

    assert response.finish_reason == "tool_calls"
    assert response.message.parts == (
        ToolCall("call_a", "add", '{"a": 1, "b": 2}'),
        ToolCall("call_b", "add", '{"a": 3, "b": 4}'),
        ToolCall("call_c", "add", '{"a": 5, "b": 6}'),
    )
    by_index = {i: "".join(d.text for d in deltas if d.index == i) for i in range(3)}
    assert by_index == {0: '{"a": 1, "b": 2}', 1: '{"a": 3, "b": 4}', 2: '{"a": 5, "b": 6}'}
    assert {d.kind for d in deltas} == {"tool_arguments"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_usage_counts_cached_and_reasoning_tokens(
    server: FakeOpenAI, provider: LiteLLMProvider, stream: bool
) -> None:
    counts = wire.token_usage(1200, 80, cached=1024, reasoning=64)
    reply = wire.Stream(wire.text_deltas("ok"), usage=counts) if stream else None
    server.reply(reply or wire.completion("ok", usage=counts))
    response = complete(provider, ask(server), stream)
    assert response.usage == Usage(
        input_tokens=1200, output_tokens=80, cached_tokens=1024, reasoning_tokens=64
    )


def test_the_next_turn_sends_each_tool_result_as_a_tool_message_right_after_the_calls(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    history = (
        Message.text("user", "What are 1 + 2 and 3 + x?"),
        Message(
            "assistant",
            (
                TextPart("Adding."),
                ToolCall("call_12", "add", '{"a": 1, "b": 2}'),
                ToolCall("call_3x", "add", '{"a": 3, "b": "x"}'),
            ),
        ),
        Message(
            "tool",
            (
                ToolResult("call_12", "add", "3"),
                ToolResult("call_3x", "add", "b must be an integer", is_error=True),
            ),
        ),
        Message.text("user", "Just the first, then."),
    )
    server.reply(wire.completion("3."))

    provider.complete(ask(server, *history, tools=(ADD,)))

    assert server.requests[0].body["messages"][1:] == [
        {"role": "user", "content": "What are 1 + 2 and 3 + x?"},
        {
            "role": "assistant",
            "content": "Adding.",
            "tool_calls": [
                {
                    "id": "call_12",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                },
                {
                    "id": "call_3x",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 3, "b": "x"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_12", "content": "3"},
        {"role": "tool", "tool_call_id": "call_3x", "content": "Error: b must be an integer"},
        {"role": "user", "content": "Just the first, then."},
    ]


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("headers", "after"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "1250", "retry-after": "2"}, 1.25)],
    ids=["retry-after", "retry-after-ms"],
)
def test_a_429_is_retryable_after_the_servers_delay_after_exactly_one_attempt(
    server: FakeOpenAI,
    provider: LiteLLMProvider,
    stream: bool,
    headers: dict[str, str],
    after: float,
) -> None:
    server.reply(wire.error(429, "Rate limit reached for requests", headers=headers))
    with pytest.raises(Retryable, match="Rate limit reached") as caught:
        complete(provider, ask(server), stream)
    assert caught.value.retry_after == after
    assert (caught.value.provider, caught.value.model) == ("litellm", "openai/gpt-4.1")
    [attempt] = server.requests  # LiteLLM's retries and the SDK's are off
    assert attempt.headers["x-stainless-retry-count"] == "0"


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
def test_timeouts_conflicts_and_server_errors_are_retryable_after_one_attempt(
    server: FakeOpenAI, provider: LiteLLMProvider, status: int
) -> None:
    server.reply(wire.error(status, "The server had an error while processing your request."))
    with pytest.raises(Retryable, match=f"HTTP {status}"):
        provider.complete(ask(server))
    assert len(server.requests) == 1


def test_a_400_is_fatal_and_names_the_provider_the_model_and_the_servers_message(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    server.reply(
        wire.error(400, "Invalid value for 'temperature': 7 is greater than the maximum of 2.")
    )
    with pytest.raises(Fatal) as caught:
        provider.complete(ask(server, temperature=7))
    error = caught.value
    assert not isinstance(error, ContextLengthExceeded)
    assert str(error) == (
        "litellm model 'openai/gpt-4.1' rejected the request (HTTP 400): "
        "Invalid value for 'temperature': 7 is greater than the maximum of 2."
    )
    assert (error.provider, error.model) == ("litellm", "openai/gpt-4.1")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Incorrect API key provided: sk-test-***-key."),
        (403, "You are not allowed to sample from this model"),
        (404, "The model `gpt-4.1` does not exist or you do not have access to it."),
        (422, "Unprocessable entity"),
    ],
)
def test_auth_permission_not_found_and_unprocessable_are_fatal(
    server: FakeOpenAI, provider: LiteLLMProvider, status: int, message: str
) -> None:
    server.reply(wire.error(status, message))
    with pytest.raises(Fatal, match=f"HTTP {status}") as caught:
        provider.complete(ask(server))
    assert not isinstance(caught.value, Retryable)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "reply",
    [
        wire.error(400, "Your input exceeds the context window.", code="context_length_exceeded"),
        wire.error(400, "This model's maximum context length is 128000 tokens. However, ..."),
    ],
    ids=["by code", "by message"],
)
def test_context_length_exceeded_is_its_own_fatal_error(
    server: FakeOpenAI, provider: LiteLLMProvider, reply: wire.Error
) -> None:
    server.reply(reply)
    with pytest.raises(ContextLengthExceeded, match=re.escape("openai/gpt-4.1")):
        provider.complete(ask(server))


def test_an_error_event_mid_stream_is_retryable(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    error = wire.error_body("The server had an error processing your request.", "server_error")
    server.reply(wire.Stream(wire.text_deltas("Par", "tial"), error=error))
    with pytest.raises(Retryable, match="server had an error"):
        streamed(provider, ask(server))


def test_a_stream_cut_off_mid_body_is_retryable(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    server.reply(wire.Stream(wire.text_deltas("half an an"), cut=True))
    with pytest.raises(Retryable):
        streamed(provider, ask(server))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_read_timeout_from_settings_is_retryable(
    server: FakeOpenAI, provider: LiteLLMProvider, stream: bool
) -> None:
    late = wire.Stream(wire.text_deltas("late")) if stream else wire.completion("too late")
    server.reply(wire.Hang(1.0, late))
    with pytest.raises(Retryable, match="timed out"):
        complete(provider, ask(server, timeout=0.2), stream)
    assert server.requests[0].headers["x-stainless-read-timeout"] == "0.2"


def test_connection_refused_is_retryable(
    provider: LiteLLMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(KEY_ENV, API_KEY)
    request = ModelRequest(
        f"litellm:{MODEL}",
        "",
        (Message.text("user", "hi"),),
        settings={"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": KEY_ENV},
    )
    with pytest.raises(Retryable, match="Connection error"):
        provider.complete(request)


# --- settings and safety ----------------------------------------------------------------------


def test_request_settings_reach_the_wire_unchanged(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    settings: dict[str, Any] = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 300,
        "seed": 7,
        "stop": ["END"],
        "response_format": {"type": "json_object"},
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    server.reply(wire.completion("{}"), wire.completion("ok"))
    provider.complete(ask(server, tools=(ADD,), **settings))
    reasoning: dict[str, Any] = {"reasoning_effort": "high", "max_completion_tokens": 500}
    provider.complete(ask(server, model="openai/o4-mini", **reasoning))
    first, second = (r.body for r in server.requests)
    assert {k: first[k] for k in settings} == settings
    assert {k: second[k] for k in reasoning} == reasoning


def test_a_missing_key_variable_is_fatal_names_it_and_sends_nothing(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    with pytest.raises(Fatal, match="TEAM_KEY"):
        provider.complete(ask(server, api_key_env="TEAM_KEY"))
    assert server.requests == []


def test_without_a_key_variable_litellm_reads_the_providers_own(
    server: FakeOpenAI, provider: LiteLLMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-litellms-own-lookup")
    server.reply(wire.completion("ok"))
    provider.complete(ask(server, api_key_env=None))
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-litellms-own-lookup"


def test_no_key_anywhere_is_fatal_at_once_and_names_litellms_variable(
    server: FakeOpenAI, provider: LiteLLMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Fatal, match="OPENAI_API_KEY") as caught:
        provider.complete(ask(server, api_key_env=None))
    assert not isinstance(caught.value, Retryable)  # LiteLLM calls it an HTTP 500
    assert server.requests == []


@pytest.mark.parametrize("timeout", ["soon", -1, 0.0])
def test_a_bad_timeout_setting_is_fatal(
    server: FakeOpenAI, provider: LiteLLMProvider, timeout: object
) -> None:
    with pytest.raises(Fatal, match="timeout"):
        provider.complete(ask(server, timeout=timeout))


def test_one_provider_serves_many_threads_at_once(
    server: FakeOpenAI, provider: LiteLLMProvider
) -> None:
    workers = 8
    server.reply(*(wire.completion(f"answer {i}") for i in range(workers)))
    start = threading.Barrier(workers)
    answers: list[str] = []
    failures: list[BaseException] = []

    def call() -> None:
        try:
            start.wait(5)
            answers.append(provider.complete(ask(server)).message.joined_text)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=call) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert failures == []
    assert sorted(answers) == sorted(f"answer {i}" for i in range(workers))


def open_pool_streams() -> set[int]:
    """Response streams still open in httpcore's connection pools, by id."""
    return {id(o) for o in gc.get_objects() if isinstance(o, PoolByteStream) and not o._closed}


def fail(delta: Delta) -> None:
    raise RuntimeError("the follower went away")


@pytest.mark.parametrize("failure", ["error event", "on_delta raises"])
@pytest.mark.parametrize("via", ["openai", "anthropic"])
def test_a_stream_that_fails_midway_closes_its_response_at_once(
    server: FakeOpenAI, provider: LiteLLMProvider, via: str, failure: str
) -> None:
    # Left to the garbage collector, the response could close itself inside another
    # request's connection-pool lock on the same client, and hang that thread for good.
    event = failure == "error event"
    fake = FakeAnthropic().start()
    if via == "openai":
        error = wire.error_body("The server had an error.", "server_error") if event else None
        server.reply(wire.Stream(wire.text_deltas("Par", "tial"), error=error))
        request = ask(server)
    else:
        events = claude.stream_events(claude.message(claude.text("The weather in Oslo is rainy")))
        tail = [claude.error_event("overloaded_error", "Overloaded")] if event else events[5:]
        fake.script(claude.Events([*events[:5], *tail]))
        settings = {"base_url": fake.url, "api_key_env": KEY_ENV}
        request = ModelRequest(f"litellm:{CLAUDE}", "", (Message.text("user", "hi"),), (), settings)
    gc.collect()
    gc.disable()  # so that only an explicit close can close it
    try:
        before = open_pool_streams()
        with pytest.raises(Retryable if event else RuntimeError):
            provider.complete(request, (lambda delta: None) if event else fail)
        assert open_pool_streams() - before == set()
    finally:
        gc.enable()
        fake.close()


PROBE = """
import json, os, sys
hosts = set()
def audit(event, args):
    if event == "socket.getaddrinfo":
        hosts.add(str(args[0]))
    elif event == "socket.connect" and isinstance(args[1], tuple):
        hosts.add(str(args[1][0]))
sys.addaudithook(audit)
from providers.litellm import LiteLLMProvider
from providers.types import Message, ModelRequest
from tests.fake_anthropic import FakeAnthropic, Turn, message, text
fake = FakeAnthropic().start()
fake.script(Turn(message(text('{"n": 1}'))))
os.environ["PROBE_KEY"] = "sk-ant-probe"
schema = {"name": "n", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}
settings = {"base_url": fake.url, "api_key_env": "PROBE_KEY",  # structured output: a beta header
            "response_format": {"type": "json_schema", "json_schema": schema}}
request = ModelRequest("litellm:anthropic/claude-sonnet-4-5", "", (Message.text("user", "hi"),),
                       settings=settings)
answer = LiteLLMProvider().complete(request).message.joined_text
print(json.dumps({"answer": answer, "hosts": sorted(hosts),
                  "dotenv": os.environ.get("STEPWISE_DOTENV_PROBE")}))
"""


def test_litellm_is_loaded_and_used_without_touching_the_network_or_a_dotenv_file(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("STEPWISE_DOTENV_PROBE=loaded\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"answer": '{"n": 1}', "hosts": ["127.0.0.1"], "dotenv": None}
