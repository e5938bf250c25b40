"""Thinking and thought signatures through real LiteLLM, over real HTTP.

`anthropic/<model>` goes to tests/fake_anthropic.py and `gemini/<model>` to
tests/fake_gemini.py. The fake Gemini server rejects, as Gemini 3 does, a history
whose signed function call comes back without its signature. Ends with a whole
run on the embedded runtime: this module is also the agents module for that test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from providers.errors import ContextLengthExceeded, Fatal, Retryable
from providers.litellm import LiteLLMProvider
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
from tests import fake_anthropic as claude
from tests import fake_gemini as gemini
from tests.fake_anthropic import FakeAnthropic
from tests.fake_gemini import FakeGemini

KEY_ENV = "LITELLM_TEST_KEY"
CLAUDE = "anthropic/claude-sonnet-4-5"
SIGNATURE = "CiQBjz1rX7Zs3n+Ok0/signed+thought=="
WEATHER = ToolSpec(
    "weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture(scope="module")
def provider() -> LiteLLMProvider:
    return LiteLLMProvider()


@pytest.fixture
def anthropic(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    monkeypatch.setenv(KEY_ENV, "sk-ant-fake")
    yield from claude.serve()


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    monkeypatch.setenv(KEY_ENV, "gemini-fake-key")
    yield from gemini.serve()


def ask(
    server: FakeAnthropic | FakeGemini, model: str, *messages: Message, **settings: Any
) -> ModelRequest:
    return ModelRequest(
        f"litellm:{model}",
        "You forecast.",
        messages or (Message.text("user", "Weather in Oslo and Bergen?"),),
        (WEATHER,),
        {"base_url": server.url, "api_key_env": KEY_ENV, **settings},
    )


def complete(
    provider: LiteLLMProvider,
    request: ModelRequest,
    stream: bool,
    deltas: list[Delta] | None = None,
) -> ModelResponse:
    return provider.complete(
        request, (deltas if deltas is not None else []).append if stream else None
    )


def answered(first: ModelResponse, *results: str) -> tuple[Message, ...]:
    """The history after `first`: the question, its reply, a tool message answering each call."""
    calls = first.message.tool_calls
    answers = tuple(ToolResult(c.id, c.name, r) for c, r in zip(calls, results, strict=True))
    return (
        Message.text("user", "Weather in Oslo and Bergen?"),
        first.message,
        Message("tool", answers),
    )


# --- Anthropic thinking -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_second_anthropic_turn_carries_the_signed_thinking_unchanged_before_the_tool_results(
    anthropic: FakeAnthropic, provider: LiteLLMProvider, stream: bool
) -> None:
    signed = claude.thinking("Oslo first; the user lives there.", "EqQBCgIYAhIM1gbcDa9G+/==")
    hidden = claude.redacted_thinking("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3")
    calls = [
        claude.tool_use("weather", {"city": "Oslo"}, id="toolu_oslo"),
        claude.tool_use("weather", {"city": "Bergen"}, id="toolu_bergen"),
    ]
    counts = claude.usage(50, 90, cache_read=30, cache_write=7, thinking_tokens=60)
    anthropic.script(
        claude.Turn(
            claude.message(signed, hidden, claude.text("Checking."), *calls, usage_=counts)
        ),
        claude.Turn(claude.message(claude.text("Rain in Oslo, fog in Bergen."))),
    )

    first = complete(provider, ask(anthropic, CLAUDE, thinking_budget=2048), stream)

    assert first.message.parts[:4] == (
        Thinking(signed["thinking"], signed["signature"], False, "litellm"),
        Thinking(hidden["data"], None, True, "litellm"),
        TextPart("Checking."),
        ToolCall("toolu_oslo", "weather", '{"city": "Oslo"}'),
    )
    assert first.finish_reason == "tool_calls"
    assert first.usage == Usage(87, 90, cached_tokens=30, cache_write_tokens=7, reasoning_tokens=60)

    history = answered(first, "rain", "fog")
    second = complete(provider, ask(anthropic, CLAUDE, *history, thinking_budget=2048), stream)

    assert second.message.joined_text == "Rain in Oslo, fog in Bergen."
    body = anthropic.requests[1].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [signed, hidden, claude.text("Checking."), *calls]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": "rain"},
                {"type": "tool_result", "tool_use_id": "toolu_bergen", "content": "fog"},
            ],
        },
    ]


def test_streamed_anthropic_thinking_arrives_as_thinking_deltas(
    anthropic: FakeAnthropic, provider: LiteLLMProvider
) -> None:
    thought = "Two cities, so two calls at once."
    anthropic.script(
        claude.Turn(claude.message(claude.thinking(thought, "sig=="), claude.text("Checking.")))
    )
    deltas: list[Delta] = []
    response = complete(provider, ask(anthropic, CLAUDE, thinking_budget=1024), True, deltas)
    thinking = [d.text for d in deltas if d.kind == "thinking"]
    assert len(thinking) > 1
    assert "".join(thinking) == thought
    assert "".join(d.text for d in deltas if d.kind == "text") == "Checking."
    assert response.message.parts[0] == Thinking(thought, "sig==", False, "litellm")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("failure", "expected", "after"),
    [
        (
            claude.Failure(429, "rate_limit_error", "Rate limited", {"retry-after": "7"}),
            Retryable,
            7.0,
        ),
        (claude.Failure(529, "overloaded_error", "Overloaded"), Retryable, None),
        (
            claude.Failure(400, "invalid_request_error", "temperature: must be at most 1"),
            Fatal,
            None,
        ),
        (
            claude.Failure(
                400, "invalid_request_error", "prompt is too long: 210345 tokens > 200000"
            ),
            ContextLengthExceeded,
            None,
        ),
    ],
    ids=["429", "529", "400", "too long"],
)
def test_anthropic_errors_are_classified_once_with_the_servers_message(
    anthropic: FakeAnthropic,
    provider: LiteLLMProvider,
    stream: bool,
    failure: claude.Failure,
    expected: type[Exception],
    after: float | None,
) -> None:
    anthropic.script(failure)
    with pytest.raises(expected) as caught:
        complete(provider, ask(anthropic, CLAUDE), stream)
    assert type(caught.value) is expected
    assert f"litellm model '{CLAUDE}'" in str(caught.value)
    assert failure.message in str(caught.value)
    if isinstance(caught.value, Retryable):
        assert caught.value.retry_after == after
    assert len(anthropic.requests) == 1


def test_an_anthropic_error_event_mid_stream_is_retryable(
    anthropic: FakeAnthropic, provider: LiteLLMProvider
) -> None:
    events = claude.stream_events(claude.message(claude.text("The weather in Oslo is")))[:5]
    anthropic.script(claude.Events([*events, claude.error_event("overloaded_error", "Overloaded")]))
    with pytest.raises(Retryable, match="Overloaded"):
        complete(provider, ask(anthropic, CLAUDE), True)


def test_an_anthropic_stream_that_ends_before_message_stop_is_retryable(
    anthropic: FakeAnthropic, provider: LiteLLMProvider
) -> None:
    events = claude.stream_events(claude.message(claude.text("The weather in Oslo is")))
    anthropic.script(claude.Events(events[:5]))  # cut after two text deltas
    with pytest.raises(Retryable, match="ended before the model finished"):
        complete(provider, ask(anthropic, CLAUDE), True)


# --- Gemini thought signatures ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("model", ["gemini/gemini-2.5-pro", "gemini/gemini-3-pro-preview"])
def test_a_gemini_thought_signature_goes_back_on_its_function_call_next_turn(
    google: FakeGemini, provider: LiteLLMProvider, stream: bool, model: str
) -> None:
    google.script(
        gemini.Turn(
            gemini.response(
                gemini.text("Two cities: two calls.", thought=True),
                gemini.function_call("weather", {"city": "Oslo"}, SIGNATURE),
                gemini.function_call("weather", {"city": "Bergen"}),
                usage_=gemini.usage(100, 20, thoughts=30, cached=40),
            )
        ),
        gemini.Turn(gemini.response(gemini.text("Rain and fog."))),
    )

    first = complete(provider, ask(google, model), stream)

    oslo, _ = first.message.tool_calls
    assert (oslo.name, oslo.arguments) == ("weather", '{"city": "Oslo"}')
    assert "__thought__" not in oslo.id  # a plain id, valid for any provider
    assert first.message.parts[-1] == OpaqueItem(
        "litellm",
        {
            "model": model,
            "tool_signatures": {oslo.id: SIGNATURE},
            "thought_signatures": [SIGNATURE],
        },
    )
    assert first.usage == Usage(100, 50, cached_tokens=40, reasoning_tokens=30)

    complete(provider, ask(google, model, *answered(first, "rain", "fog")), stream)

    sent = google.requests[1]
    path = f"/v1beta/models/{model.partition('/')[2]}"
    assert sent.path == path + (":streamGenerateContent" if stream else ":generateContent")
    contents = sent.body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    calls = [p for p in contents[1]["parts"] if "function_call" in p]
    assert [(p["function_call"]["args"], p.get("thoughtSignature")) for p in calls] == [
        ({"city": "Oslo"}, SIGNATURE),  # the real one, never LiteLLM's stand-in for Gemini 3
        ({"city": "Bergen"}, None),
    ]
    answers = [p["function_response"]["response"] for p in contents[2]["parts"]]
    assert answers == [{"content": "rain"}, {"content": "fog"}]


def test_a_history_that_lost_its_thought_signature_is_rejected_as_gemini_rejects_it(
    google: FakeGemini, provider: LiteLLMProvider
) -> None:
    google.script(
        gemini.Turn(gemini.response(gemini.function_call("weather", {"city": "Oslo"}, SIGNATURE)))
    )
    first = provider.complete(ask(google, "gemini/gemini-2.5-pro"))
    *history, results = answered(first, "rain")
    stripped = Message(
        "assistant", tuple(p for p in first.message.parts if not isinstance(p, OpaqueItem))
    )
    with pytest.raises(Fatal, match="missing a thought_signature"):
        provider.complete(ask(google, "gemini/gemini-2.5-pro", history[0], stripped, results))


def test_the_signature_on_a_final_gemini_answer_goes_back_on_its_text(
    google: FakeGemini, provider: LiteLLMProvider
) -> None:
    google.script(
        gemini.Turn(gemini.response(gemini.text("Rain in Oslo.", signature=SIGNATURE))),
        gemini.Turn(gemini.response(gemini.text("Fog in Bergen."))),
    )
    first = complete(provider, ask(google, "gemini/gemini-2.5-pro"), True)
    follow_up = (Message.text("user", "Oslo?"), first.message, Message.text("user", "Bergen?"))
    provider.complete(ask(google, "gemini/gemini-2.5-pro", *follow_up))
    assert google.requests[1].body["contents"][1] == {
        "role": "model",
        "parts": [{"text": "Rain in Oslo.", "thoughtSignature": SIGNATURE}],
    }


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_gemini_errors_are_classified_with_the_servers_delay_and_message(
    google: FakeGemini, provider: LiteLLMProvider, stream: bool
) -> None:
    google.script(
        gemini.Failure(429, "Resource has been exhausted", {"retry-after": "7"}),
        gemini.Failure(400, "The input token count (1200000) exceeds the maximum (1048576)."),
    )
    with pytest.raises(Retryable, match="Resource has been exhausted") as caught:
        complete(provider, ask(google, "gemini/gemini-2.5-pro"), stream)
    assert caught.value.retry_after == 7.0
    with pytest.raises(ContextLengthExceeded, match="input token count"):
        complete(provider, ask(google, "gemini/gemini-2.5-pro"), stream)


def test_a_gemini_model_without_any_key_is_fatal_at_once(
    google: FakeGemini, provider: LiteLLMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    request = ask(google, "gemini/gemini-2.5-pro", api_key_env=None)
    with pytest.raises(Fatal, match="GEMINI_API_KEY") as caught:
        provider.complete(request)
    assert not isinstance(caught.value, Retryable)  # LiteLLM calls it a connection error
    assert google.requests == []


# --- a whole run on the embedded runtime ------------------------------------------------------


@tool
def city_weather(city: str) -> str:
    """The weather in a city, from a very small almanac.

    Args:
        city: The city's name.
    """
    return {"Oslo": "rain, 8°C", "Bergen": "fog, 10°C"}.get(city, "unknown")


litellm_forecaster = Agent(
    name="litellm-forecaster",
    instructions="Answer with the weather; call the tool for every city at once.",
    model=f"litellm:{CLAUDE}",
    tools=(city_weather,),
    model_settings={"thinking_budget": 1024},
)


def test_a_run_through_litellm_thinks_calls_two_tools_and_sends_the_thinking_back(
    embedded: dict[str, str], anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPWISE_AGENTS", "tests.test_litellm_reasoning")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic.url)  # LiteLLM's own variables
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    signed = claude.thinking("Both cities, in parallel.", "EqQBsigned+/==")
    calls = [
        claude.tool_use("city_weather", {"city": "Oslo"}, id="toolu_oslo"),
        claude.tool_use("city_weather", {"city": "Bergen"}, id="toolu_bergen"),
    ]
    anthropic.script(
        claude.Turn(claude.message(signed, *calls, usage_=claude.usage(10, 5, thinking_tokens=3))),
        claude.Turn(claude.message(claude.text("Oslo: rain, 8°C. Bergen: fog, 10°C."))),
    )

    run_id = client.start_run("litellm-forecaster", "Weather in Oslo and Bergen?")
    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "Oslo: rain, 8°C. Bergen: fog, 10°C."
    assert run.usage == Usage(20, 10, reasoning_tokens=3)
    first, second = anthropic.bodies()
    assert first["stream"] is second["stream"] is True
    assert first["system"] == [{"type": "text", "text": litellm_forecaster.instructions}]
    assert second["messages"][1:] == [
        {"role": "assistant", "content": [signed, *calls]},  # stored, reloaded, sent back
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": "rain, 8°C"},
                {"type": "tool_result", "tool_use_id": "toolu_bergen", "content": "fog, 10°C"},
            ],
        },
    ]
    assert json.dumps(second).count("EqQBsigned+/==") == 1
