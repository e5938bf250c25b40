"""The anthropic provider through the real SDK, against a local Messages API over HTTP.

Ends with a whole run on the embedded runtime: this module is also the agents
module (`STEPWISE_AGENTS=tests.test_anthropic_provider`) for that test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from providers.anthropic import AnthropicProvider, to_wire
from providers.base import POOL_SHARDS
from providers.errors import ContextLengthExceeded, Fatal, Retryable
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    OnDelta,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from tasks import Agent, client, tool
from tests.fake_anthropic import (
    Events,
    Failure,
    FakeAnthropic,
    Turn,
    error_event,
    message,
    redacted_thinking,
    serve,
    stream_events,
    text,
    thinking,
    tool_use,
    usage,
)
from tests.in_flight import all_in_flight

WEATHER = ToolSpec(
    "weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """A fresh fake API, with the SDK's environment pointing at it."""
    for server in serve():
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
        yield server


def request(*messages: Message, tools: tuple[ToolSpec, ...] = (), **settings: Any) -> ModelRequest:
    return ModelRequest(
        "anthropic:claude-fake",
        "You forecast.",
        messages or (Message.text("user", "hi"),),
        tools,
        settings,
    )


def sink(streamed: bool = True) -> OnDelta | None:
    """An `on_delta` that keeps nothing (to ask for a stream), or None for a plain call."""
    kept: list[Delta] = []
    return kept.append if streamed else None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- calls that succeed -----------------------------------------------------------------------


def test_a_text_reply_without_on_delta_is_one_plain_json_call(fake: FakeAnthropic) -> None:
    fake.script(Turn(message(text("Rain in Oslo."), usage_=usage(30, 6, cache_read=20))))
    response = AnthropicProvider().complete(request(temperature=0.3))
    assert response.message == Message("assistant", (TextPart("Rain in Oslo."),))
    assert response.finish_reason == "stop"
    assert response.usage == Usage(50, 6, cached_tokens=20)
    assert response.model == "anthropic:claude-fake-20260101"
    (sent,) = fake.requests
    assert sent.path == "/v1/messages"
    assert sent.body == {
        "model": "claude-fake",
        "max_tokens": 4096,
        "system": "You forecast.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "temperature": 0.3,
    }
    assert sent.headers["anthropic-version"]
    assert "sk-ant-fake" in sent.headers.get("x-api-key", sent.headers.get("authorization", ""))


def test_a_tool_use_reply_becomes_tool_calls(fake: FakeAnthropic) -> None:
    fake.script(
        Turn(message(text("Looking."), tool_use("weather", {"city": "Oslo"}, id="toolu_1")))
    )
    response = AnthropicProvider().complete(request(tools=(WEATHER,)))
    assert response.finish_reason == "tool_calls"
    assert response.message.tool_calls == (ToolCall("toolu_1", "weather", '{"city": "Oslo"}'),)
    assert fake.requests[0].body["tools"] == [
        {"name": "weather", "description": WEATHER.description, "input_schema": WEATHER.parameters}
    ]


def test_a_streamed_request_with_history_and_tools_is_sent_exactly_as_to_wire_writes_it(
    fake: FakeAnthropic,
) -> None:
    # What goes out is to_wire's body as it is, the SDK's own handling notwithstanding.
    fake.script(Turn(message(text("Rain."))))
    call = ToolCall("toolu_1", "weather", '{"city": "Oslo"}')
    sent_request = request(
        Message.text("user", "Weather in Oslo?"),
        Message("assistant", (TextPart("Looking."), call)),
        Message("tool", (ToolResult("toolu_1", "weather", "rain"),)),
        tools=(WEATHER,),
        temperature=0.2,
    )

    AnthropicProvider().complete(sent_request, sink())

    assert fake.requests[0].body == {**to_wire(sent_request), "stream": True}
    assert [m["role"] for m in fake.requests[0].body["messages"]] == ["user", "assistant", "user"]


def test_streamed_text_reaches_on_delta_as_it_arrives(fake: FakeAnthropic) -> None:
    answer = "Rain in Oslo, sun in Bergen, fog over the fjords."
    fake.script(Turn(message(text(answer), usage_=usage(40, 12, cache_write=25))))
    deltas: list[Delta] = []
    response = AnthropicProvider().complete(request(), deltas.append)
    assert fake.requests[0].body["stream"] is True
    assert len(deltas) > 3
    assert {d.kind for d in deltas} == {"text"}
    assert "".join(d.text for d in deltas) == answer
    assert response.message.joined_text == answer
    assert response.usage == Usage(65, 12, cache_write_tokens=25)


def test_streamed_tool_use_fragments_are_assembled_per_block(fake: FakeAnthropic) -> None:
    fake.script(
        Turn(
            message(
                tool_use("weather", {"city": "Oslo", "unit": "celsius"}, id="toolu_a"),
                tool_use("weather", {"city": "Bergen"}, id="toolu_b"),
            )
        )
    )
    deltas: list[Delta] = []
    response = AnthropicProvider().complete(request(tools=(WEATHER,)), deltas.append)
    first = [d.text for d in deltas if d.kind == "tool_arguments" and d.index == 0]
    second = [d.text for d in deltas if d.kind == "tool_arguments" and d.index == 1]
    assert len(first) > 1 and len(second) > 1
    assert response.message.tool_calls == (
        ToolCall("toolu_a", "weather", "".join(first)),
        ToolCall("toolu_b", "weather", "".join(second)),
    )
    assert [c.parsed_arguments() for c in response.message.tool_calls] == [
        {"city": "Oslo", "unit": "celsius"},
        {"city": "Bergen"},
    ]
    assert response.finish_reason == "tool_calls"


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "plain"])
def test_a_second_turn_carries_the_signed_thinking_block_unchanged(
    fake: FakeAnthropic, streamed: bool
) -> None:
    signed = thinking("Oslo first; the user lives there.", "EqQBCgIYAhIM1gbcDa9GJwZA2b3h+/==")
    hidden = redacted_thinking("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP")
    call = tool_use("weather", {"city": "Oslo"}, id="toolu_t")
    fake.script(
        Turn(message(signed, hidden, call, usage_=usage(50, 90, thinking_tokens=60))),
        Turn(message(text("Rain."))),
    )
    provider = AnthropicProvider()
    on_delta = sink(streamed)
    first = provider.complete(request(tools=(WEATHER,), thinking_budget=2048), on_delta)
    assert first.message.parts[0] == Thinking(
        signed["thinking"], signed["signature"], False, "anthropic"
    )
    assert first.usage.reasoning_tokens == 60
    history = (
        Message.text("user", "weather?"),
        first.message,
        Message("tool", (ToolResult("toolu_t", "weather", "rain"),)),
    )
    provider.complete(request(*history, tools=(WEATHER,), thinking_budget=2048), on_delta)
    second = fake.requests[1].body
    assert second["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert second["messages"][1] == {"role": "assistant", "content": [signed, hidden, call]}
    assert second["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_t", "content": "rain"}],
    }


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("failure", "expected", "after"),
    [
        (Failure(429, "rate_limit_error", "Rate limited", {"retry-after": "7"}), Retryable, 7.0),
        (
            Failure(429, "rate_limit_error", "Rate limited", {"retry-after-ms": "1500"}),
            Retryable,
            1.5,
        ),
        (Failure(529, "overloaded_error", "Overloaded"), Retryable, None),
        (Failure(500, "api_error", "Internal server error"), Retryable, None),
        (Failure(400, "invalid_request_error", "temperature: must be at most 1"), Fatal, None),
        (Failure(401, "authentication_error", "invalid x-api-key"), Fatal, None),
        (
            Failure(
                400, "invalid_request_error", "prompt is too long: 210345 tokens > 200000 maximum"
            ),
            ContextLengthExceeded,
            None,
        ),
        (
            Failure(
                429,
                "rate_limit_error",
                "You have reached your monthly spend limit",
                details={"error_code": "enforced_spend_limit_reached"},
            ),
            Fatal,
            None,
        ),
    ],
)
def test_http_errors_are_classified_with_the_servers_message(
    fake: FakeAnthropic,
    failure: Failure,
    expected: type[Exception],
    after: float | None,
    streamed: bool,
) -> None:
    fake.script(failure)
    with pytest.raises(expected) as caught:
        AnthropicProvider().complete(request(), sink(streamed))
    error = caught.value
    assert type(error) is expected
    assert "anthropic model 'claude-fake'" in str(error)
    assert failure.message in str(error)
    assert f"HTTP {failure.status}" in str(error)
    if isinstance(error, Retryable):
        assert error.retry_after == after
    assert len(fake.requests) == 1  # SDK retries are off: the Celery task retries


def test_a_500_is_tried_exactly_once(fake: FakeAnthropic) -> None:
    fake.script(Failure(500, "api_error", "Internal server error"), Turn(message(text("late"))))
    with pytest.raises(Retryable):
        AnthropicProvider().complete(request())
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("overloaded_error", Retryable), ("api_error", Retryable), ("invalid_request_error", Fatal)],
)
def test_an_error_event_mid_stream_is_classified_by_its_type(
    fake: FakeAnthropic, kind: str, expected: type[Exception]
) -> None:
    events = stream_events(message(text("The weather in Oslo is")))[:5]
    fake.script(Events([*events, error_event(kind, "Overloaded")]))
    deltas: list[Delta] = []
    with pytest.raises(expected, match=f"error event in stream: {kind}"):
        AnthropicProvider().complete(request(), deltas.append)
    assert deltas  # text had streamed before the error


def test_a_stream_cut_short_is_retryable(fake: FakeAnthropic) -> None:
    fake.script(Events(stream_events(message(text("The weather in Oslo is")))[:5]))
    with pytest.raises(Retryable, match="before message_stop"):
        AnthropicProvider().complete(request(), sink())


def test_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(Retryable, match="connection failed") as caught:
        AnthropicProvider().complete(request())
    assert caught.value.retry_after is None


def test_a_slow_server_times_out_as_retryable(fake: FakeAnthropic) -> None:
    fake.script(Turn(message(text("too late")), delay=1.0))
    with pytest.raises(Retryable, match="timed out"):
        AnthropicProvider().complete(request(timeout=0.2))


def test_no_api_key_is_fatal_and_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(Fatal, match="ANTHROPIC_API_KEY"):
        AnthropicProvider().complete(request())


# --- configuration and clients ----------------------------------------------------------------


def test_the_base_url_comes_from_anthropic_base_url(fake: FakeAnthropic) -> None:
    fake.script(Turn(message(text("ok"))))
    assert AnthropicProvider().complete(request()).message.joined_text == "ok"
    assert len(fake.requests) == 1


def test_settings_base_url_and_api_key_env_win_over_the_environment(
    fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("FORECAST_KEY", "sk-ant-forecast")
    fake.script(Turn(message(text("ok"))))
    response = AnthropicProvider().complete(request(base_url=fake.url, api_key_env="FORECAST_KEY"))
    assert response.message.joined_text == "ok"
    headers = fake.requests[0].headers
    assert "sk-ant-forecast" in headers.get("x-api-key", headers.get("authorization", ""))


def test_the_connections_of_more_calls_in_flight_than_the_sdk_keeps_stay_open_for_the_next(
    fake: FakeAnthropic,
) -> None:
    provider, calls = AnthropicProvider(), 160  # the SDK's own client keeps 100 between calls
    for _ in range(2):
        gate = threading.Event()
        fake.script(*(Turn(message(text(f"answer {i}")), gate=gate) for i in range(calls)))
        answers = all_in_flight(
            calls, lambda: provider.complete(request()), lambda: len(fake.requests), gate
        )
        texts = sorted(a.message.joined_text for a in answers)
        assert texts == sorted(f"answer {i}" for i in range(calls))

    # New threads may fall on the client's pools in another order: one more connection
    # a pool at most, where keeping only the SDK's 100 would have opened 60 more.
    assert calls <= len({r.peer for r in fake.requests}) <= calls + POOL_SHARDS


def test_streamed_calls_one_after_another_reuse_one_connection(fake: FakeAnthropic) -> None:
    provider = AnthropicProvider()
    for n in range(3):
        fake.script(Turn(message(text(f"answer {n}"))))
        assert provider.complete(request(), sink()).message.joined_text == f"answer {n}"

    assert len({r.peer for r in fake.requests}) == 1


def test_one_client_serves_each_base_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-one")
    monkeypatch.setenv("OTHER_KEY", "sk-ant-two")
    provider = AnthropicProvider()
    seen: list[object] = []
    threads = [
        threading.Thread(target=lambda: seen.append(provider.client({"base_url": "http://a"})))
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 1
    same = provider.client({"base_url": "http://a"})
    assert same is seen[0]
    assert same.max_retries == 0
    assert provider.client({"base_url": "http://b"}) is not same
    assert provider.client({"base_url": "http://a", "api_key_env": "OTHER_KEY"}) is not same


# --- a whole run on the embedded runtime ------------------------------------------------------


@tool
def city_weather(city: str) -> str:
    """The weather in a city, from a very small almanac.

    Args:
        city: The city's name.
    """
    return {"Oslo": "rain, 8°C", "Bergen": "fog, 10°C"}.get(city, "unknown")


forecaster = Agent(
    name="forecaster",
    instructions="Answer with the weather; call the tool for every city at once.",
    model="anthropic:claude-fake",
    tools=(city_weather,),
)


def test_a_run_calls_two_tools_in_parallel_and_sends_both_results_in_one_message(
    embedded: dict[str, str], fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPWISE_AGENTS", "tests.test_anthropic_provider")
    fake.script(
        Turn(
            message(
                text("Checking both."),
                tool_use("city_weather", {"city": "Oslo"}, id="toolu_oslo"),
                tool_use("city_weather", {"city": "Bergen"}, id="toolu_bergen"),
            )
        ),
        Turn(message(text("Oslo: rain, 8°C. Bergen: fog, 10°C."))),
    )
    run_id = client.start_run("forecaster", "Weather in Oslo and Bergen?")
    run = client.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.result == "Oslo: rain, 8°C. Bergen: fog, 10°C."
    assert run.usage == Usage(20, 10)
    first, second = fake.bodies()
    assert first["stream"] is second["stream"] is True  # model steps stream their deltas
    assert first["system"] == forecaster.instructions
    assert first["tools"][0]["name"] == "city_weather"
    assert first["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Bergen?"}]}
    ]
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_oslo",
                    "name": "city_weather",
                    "input": {"city": "Oslo"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_bergen",
                    "name": "city_weather",
                    "input": {"city": "Bergen"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": "rain, 8°C"},
                {"type": "tool_result", "tool_use_id": "toolu_bergen", "content": "fog, 10°C"},
            ],
        },
    ]
