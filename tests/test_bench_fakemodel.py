"""The benchmarks' fake model server, driven by the real OpenAI and Anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from bench.fakemodel import Behaviour, main, running

ROOT = Path(__file__).resolve().parent.parent
ANSWER = Behaviour.answer
ARGS = {"city": "Paris", "days": 3}
SCRIPT = Behaviour(latency=0, tools=(2, 1), tool_args=ARGS)
OPENAI_TOOLS: Any = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("lookup", "other")
]
ANTHROPIC_TOOLS: Any = [
    {"name": name, "input_schema": {"type": "object"}} for name in ("lookup", "other")
]
QUESTION: Any = {"role": "user", "content": "What is the weather in Paris?"}


@pytest.fixture(scope="module")
def script_url() -> Iterator[str]:
    """A server following SCRIPT: two calls of the first tool, then one, then the answer."""
    with running(SCRIPT) as url:
        yield url


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="fake", max_retries=0)


def anthropic_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="fake", max_retries=0)


def openai_turn(messages: list[Any], calls: list[Any]) -> None:
    """Append the assistant's tool calls and a result for each, as an agent would."""
    assistant = {"role": "assistant", "content": None, "tool_calls": calls}
    results = [{"role": "tool", "tool_call_id": call["id"], "content": "sunny"} for call in calls]
    messages += [assistant, *results]


def anthropic_turn(messages: list[Any], content: list[Any]) -> None:
    """Append the assistant's content and a user turn of tool results, as an agent would."""
    uses = [block for block in content if block["type"] == "tool_use"]
    results = [
        {"type": "tool_result", "tool_use_id": use["id"], "content": "sunny"} for use in uses
    ]
    messages += [{"role": "assistant", "content": content}, {"role": "user", "content": results}]


def stats(url: str) -> dict[str, int]:
    return dict(httpx.get(f"{url}/stats").json())


def test_the_openai_script_asks_for_tools_then_answers(script_url: str) -> None:
    client = openai_client(script_url)
    messages = [QUESTION]
    ids = []
    for calls in (2, 1):
        completion = client.chat.completions.create(
            model="bench-model", messages=messages, tools=OPENAI_TOOLS
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        tool_calls = [call.model_dump() for call in choice.message.tool_calls or []]
        asked = [
            (call["function"]["name"], json.loads(call["function"]["arguments"]))
            for call in tool_calls
        ]
        assert asked == [("lookup", ARGS)] * calls
        ids += [call["id"] for call in tool_calls]
        openai_turn(messages, tool_calls)

    final = client.chat.completions.create(
        model="bench-model", messages=messages, tools=OPENAI_TOOLS
    )
    assert final.object == "chat.completion"
    assert final.model == "bench-model"
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == ANSWER
    assert final.choices[0].message.tool_calls is None
    assert final.usage is not None
    assert final.usage.completion_tokens == len(ANSWER.split())
    assert final.usage.prompt_tokens >= 1
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
    assert len(set(ids)) == 3


def test_the_anthropic_script_asks_for_tools_then_answers(script_url: str) -> None:
    client = anthropic_client(script_url)
    messages = [QUESTION]
    ids = []
    for calls in (2, 1):
        message = client.messages.create(
            model="bench-model", max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
        )
        assert message.stop_reason == "tool_use"
        content = [block.model_dump() for block in message.content]
        assert [(block["type"], block["name"], block["input"]) for block in content] == [
            ("tool_use", "lookup", ARGS)
        ] * calls
        assert all(block["id"].startswith("toolu_") for block in content)
        ids += [block["id"] for block in content]
        anthropic_turn(messages, content)

    final = client.messages.create(
        model="bench-model", max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert (final.type, final.role, final.model) == ("message", "assistant", "bench-model")
    assert [(block.type, getattr(block, "text", None)) for block in final.content] == [
        ("text", ANSWER)
    ]
    assert final.stop_reason == "end_turn"
    assert final.stop_sequence is None
    assert final.usage.output_tokens == len(ANSWER.split())
    assert final.usage.input_tokens >= 1
    assert len(set(ids)) == 3


def test_a_named_tool_is_called_instead_of_the_first() -> None:
    with running(Behaviour(latency=0, tool_name="other")) as url:
        completion = openai_client(url).chat.completions.create(
            model="m", messages=[QUESTION], tools=OPENAI_TOOLS
        )
        message = anthropic_client(url).messages.create(
            model="m", max_tokens=256, messages=[QUESTION], tools=ANTHROPIC_TOOLS
        )
    [call] = completion.choices[0].message.tool_calls or []
    assert call.model_dump()["function"] == {"name": "other", "arguments": "{}"}
    [use] = message.content
    assert (use.type, getattr(use, "name", None), getattr(use, "input", None)) == (
        "tool_use",
        "other",
        {},
    )


@pytest.mark.parametrize(
    ("behaviour", "tools"),
    [
        (Behaviour(latency=0), False),
        (Behaviour(latency=0, tool_name="lookup"), False),
        (Behaviour(latency=0, tools=()), True),
    ],
    ids=["a request without tools", "a named tool the request does not offer", "no rounds"],
)
def test_the_answer_comes_at_once_given(behaviour: Behaviour, tools: bool) -> None:
    with running(behaviour) as url:
        completion = openai_client(url).chat.completions.create(
            model="m", messages=[QUESTION], **({"tools": OPENAI_TOOLS} if tools else {})
        )
        message = anthropic_client(url).messages.create(
            model="m",
            max_tokens=256,
            messages=[QUESTION],
            **({"tools": ANTHROPIC_TOOLS} if tools else {}),
        )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == ANSWER
    assert message.stop_reason == "end_turn"
    assert getattr(message.content[0], "text", None) == ANSWER


def test_streamed_openai_text_reassembles_to_the_answer_at_the_set_pace() -> None:
    pace = 100  # words per second: six words take at least 0.06 s
    with running(Behaviour(latency=0, tools=(), tokens_per_second=pace)) as url:
        started = time.monotonic()
        chunks = list(
            openai_client(url).chat.completions.create(
                model="bench-model",
                messages=[QUESTION],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        elapsed = time.monotonic() - started
    assert elapsed >= len(ANSWER.split()) / pace
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk.model for chunk in chunks} == {"bench-model"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    assert "".join(choice.delta.content or "" for choice in with_choices) == ANSWER
    assert [choice.finish_reason for choice in with_choices if choice.finish_reason] == ["stop"]
    assert with_choices[-1].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.completion_tokens == len(ANSWER.split())
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_streamed_openai_tool_calls_reassemble(script_url: str) -> None:
    chunks = list(
        openai_client(script_url).chat.completions.create(
            model="bench-model", messages=[QUESTION], tools=OPENAI_TOOLS, stream=True
        )
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function and delta.function.name) or ""
            call["arguments"] += (delta.function and delta.function.arguments) or ""
    assert sorted(calls) == [0, 1]
    assert [(call["name"], json.loads(call["arguments"])) for call in calls.values()] == [
        ("lookup", ARGS)
    ] * 2
    assert all(call["id"].startswith("call_") for call in calls.values())
    assert calls[0]["id"] != calls[1]["id"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(chunk.usage is None for chunk in chunks)  # no include_usage, no usage chunk


def test_streamed_anthropic_tool_calls_and_text_reassemble(script_url: str) -> None:
    client = anthropic_client(script_url)
    messages = [QUESTION]
    for calls in (2, 1):
        with client.messages.stream(
            model="bench-model", max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
        ) as stream:
            kinds = {event.type for event in stream}
            message = stream.get_final_message()
        assert kinds >= {
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        }
        assert message.stop_reason == "tool_use"
        content = [block.model_dump() for block in message.content]
        assert [(block["type"], block["name"], block["input"]) for block in content] == [
            ("tool_use", "lookup", ARGS)
        ] * calls
        anthropic_turn(messages, content)

    with client.messages.stream(
        model="bench-model", max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER
    assert final.model == "bench-model"
    assert [getattr(block, "text", None) for block in final.content] == [ANSWER]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(ANSWER.split())


def test_stats_count_the_model_calls() -> None:
    with running(Behaviour(latency=0)) as url:
        assert httpx.get(f"{url}/health").text == "ok"
        assert stats(url) == {"requests": 0, "in_flight": 0, "max_in_flight": 0}
        openai_client(url).chat.completions.create(model="m", messages=[QUESTION])
        list(
            openai_client(url).chat.completions.create(model="m", messages=[QUESTION], stream=True)
        )
        anthropic_client(url).messages.create(model="m", max_tokens=256, messages=[QUESTION])
        assert stats(url) == {"requests": 3, "in_flight": 0, "max_in_flight": 1}


def test_a_body_without_messages_is_a_bad_request_in_each_dialect() -> None:
    with running(Behaviour(latency=0)) as url:
        chat = httpx.post(f"{url}/v1/chat/completions", content=b"not json")
        messages = httpx.post(f"{url}/v1/messages", json={"model": "m"})
    assert chat.status_code == messages.status_code == 400
    assert chat.json()["error"]["type"] == "invalid_request_error"
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "invalid_request_error"


def test_two_hundred_concurrent_calls_are_in_flight_together() -> None:
    async def call_all(url: str) -> list[str | None]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="fake", max_retries=0)
        async with client:
            completions = await asyncio.gather(
                *(
                    client.chat.completions.create(model="m", messages=[QUESTION])
                    for _ in range(200)
                )
            )
        return [completion.choices[0].message.content for completion in completions]

    # Long enough that all 200 are sent before the first answer, on a slow machine too.
    with running(Behaviour(latency=1.0, tools=())) as url:
        answers = asyncio.run(call_all(url))
        counts = stats(url)
    assert answers == [ANSWER] * 200
    assert counts["requests"] == 200
    assert counts["in_flight"] == 0
    assert counts["max_in_flight"] >= 100


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_cli_prints_its_url_once_and_exits_cleanly_on(signum: signal.Signals) -> None:
    command = [sys.executable, "-m", "bench.fakemodel", "--port", "0", "--latency", "0"]
    command += ["--tools", "", "--answer", "Bench over."]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            found = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
            assert found, line
            url = found.group(1)
            assert httpx.get(f"{url}/health").text == "ok"
            completion = openai_client(url).chat.completions.create(
                model="m", messages=[QUESTION], tools=OPENAI_TOOLS
            )
            assert completion.choices[0].message.content == "Bench over."
            server.send_signal(signum)
            assert server.wait(timeout=15) == 0
            assert server.stdout.read() == ""
        finally:
            if server.poll() is None:
                server.kill()


@pytest.mark.parametrize(
    "argv", [["--tools", "1,0"], ["--tools", "two"], ["--tool-args", "[1]"]], ids=str
)
def test_the_cli_rejects_a_bad_script(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
