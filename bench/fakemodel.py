"""A fake model server for benchmarks: real HTTP, real SSE, a fixed script, no state.

One asyncio process (Starlette on uvicorn) answers thousands of concurrent model calls
in the OpenAI Chat Completions wire format (`POST /v1/chat/completions`) and the
Anthropic Messages wire format (`POST /v1/messages`), streamed or not, so a benchmark
measures the runtime rather than a model. Every conversation follows the same script:
turn i asks for `tools[i]` parallel calls of one tool, and the turn after the last
round gives the final answer. The turn is the number of assistant messages already in
the request, so the server keeps no state per conversation.

    python -m bench.fakemodel --port 0 --latency 0.5 --tools 2,1
    listening on http://127.0.0.1:41234

The OpenAI SDK's base URL is then `http://127.0.0.1:41234/v1`, Anthropic's
`http://127.0.0.1:41234`. `GET /health` answers "ok" and `GET /stats` counts the
model calls: `{"requests", "in_flight", "max_in_flight"}`. In tests:

    with running(Behaviour(latency=0)) as url:
        ... OpenAI(base_url=f"{url}/v1") ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

TOKENS_PER_TOOL_CALL = 10  # the output tokens reported for each tool call
ARGUMENT_PIECE = 16  # characters of tool-call arguments per streamed delta
BAD_REQUEST = {"type": "invalid_request_error", "message": "Expected a JSON body with `messages`."}


@dataclass(frozen=True)
class Behaviour:
    """How the fake model answers: its latency, pacing, script and final text."""

    latency: float = 1.0  # seconds before the first byte of the body
    tokens_per_second: float = 0.0  # pacing of the answer's words; 0 is no pacing
    answer: str = "All done: the bench agent finished."
    tools: tuple[int, ...] = (1, 1)  # parallel tool calls asked for at turn 0, 1, ...
    tool_name: str | None = None  # None: the first tool of the request
    tool_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """What one turn says: the answer text, or `calls` calls of `tool` with `args`."""

    text: str
    tool: str | None = None
    calls: int = 0
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stats:
    """Model calls served, in flight now, and the most ever in flight at once."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one model call for as long as the block runs."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1


def plan(behaviour: Behaviour, messages: list[Any], tool_names: list[str]) -> Reply:
    """The script's reply to a conversation: tool calls while rounds remain, then the answer."""
    said = [message for message in messages if isinstance(message, dict)]
    turn = sum(1 for message in said if message.get("role") == "assistant")
    if not tool_names or turn >= len(behaviour.tools):  # no model calls a tool it was not offered
        return Reply(behaviour.answer)
    tool = behaviour.tool_name or tool_names[0]
    return Reply("", tool, behaviour.tools[turn], behaviour.tool_args)


def words(text: str) -> list[str]:
    """The text cut before each word, so the pieces join back to exactly the text."""
    return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]


def output_tokens(reply: Reply) -> int:
    """A rough output token count: words of text, or a fixed count per tool call."""
    return reply.calls * TOKENS_PER_TOOL_CALL if reply.calls else len(reply.text.split())


def _pieces(text: str) -> list[str]:
    return [text[i : i + ARGUMENT_PIECE] for i in range(0, len(text), ARGUMENT_PIECE)]


def _id() -> str:
    return uuid.uuid4().hex[:24]


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# --- OpenAI Chat Completions ------------------------------------------------------------


def openai_completion(reply: Reply, model: str, prompt_tokens: int) -> dict[str, Any]:
    """The non-streamed `chat.completion` object of a reply."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    message |= {"refusal": None, "annotations": []}
    if reply.calls:
        message["tool_calls"] = [
            {
                "id": f"call_{_id()}",
                "type": "function",
                "function": {"name": reply.tool, "arguments": json.dumps(reply.args)},
            }
            for _ in range(reply.calls)
        ]
    finish_reason = "tool_calls" if reply.calls else "stop"
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    tokens = output_tokens(reply)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens}
    return {
        "id": f"chatcmpl-{_id()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {**usage, "total_tokens": prompt_tokens + tokens},
    }


def openai_events(
    reply: Reply, model: str, prompt_tokens: int, include_usage: bool
) -> Iterator[tuple[bytes, bool]]:
    """The SSE events of a streamed reply, each with whether it carries a word to pace."""
    whole = openai_completion(reply, model, prompt_tokens)
    shell = {**whole, "object": "chat.completion.chunk"}
    del shell["choices"], shell["usage"]
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**shell, "choices": [choice], **extra})

    opening = {"role": "assistant", "content": None if reply.calls else "", "refusal": None}
    yield chunk(opening), False
    for word in words(reply.text):
        yield chunk({"content": word}), True
    for index, call in enumerate(whole["choices"][0]["message"].get("tool_calls", [])):
        named = {**call, "function": {"name": reply.tool, "arguments": ""}}
        yield chunk({"tool_calls": [{"index": index, **named}]}), False
        for piece in _pieces(call["function"]["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), False
    yield chunk({}, whole["choices"][0]["finish_reason"]), False
    if include_usage:
        yield _sse({**shell, "choices": [], "usage": whole["usage"]}), False
    yield b"data: [DONE]\n\n", False


# --- Anthropic Messages -----------------------------------------------------------------


def anthropic_message(reply: Reply, model: str, input_tokens: int) -> dict[str, Any]:
    """The non-streamed `message` object of a reply."""
    content: list[dict[str, Any]] = [
        {"type": "tool_use", "id": f"toolu_{_id()}", "name": reply.tool, "input": reply.args}
        for _ in range(reply.calls)
    ]
    if not reply.calls:
        content = [{"type": "text", "text": reply.text}]
    return {
        "id": f"msg_{_id()}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if reply.calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens(reply)},
    }


def anthropic_events(reply: Reply, model: str, input_tokens: int) -> Iterator[tuple[bytes, bool]]:
    """The SSE events of a streamed reply, each with whether it carries a word to pace."""
    whole = anthropic_message(reply, model, input_tokens)
    start = {**whole, "content": [], "stop_reason": None}
    start["usage"] = {**whole["usage"], "output_tokens": 1}
    yield _sse({"type": "message_start", "message": start}, "message_start"), False
    yield _sse({"type": "ping"}, "ping"), False
    for index, block in enumerate(whole["content"]):
        opening = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
        event = {"type": "content_block_start", "index": index, "content_block": opening}
        yield _sse(event, "content_block_start"), False
        if block["type"] == "text":
            deltas = [({"type": "text_delta", "text": word}, True) for word in words(block["text"])]
        else:
            partial = _pieces(json.dumps(block["input"]))
            deltas = [
                ({"type": "input_json_delta", "partial_json": piece}, False) for piece in partial
            ]
        for delta, paced in deltas:
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            yield _sse(event, "content_block_delta"), paced
        yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop"), False
    ending = {"stop_reason": whole["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": whole["usage"]["output_tokens"]}
    yield _sse({"type": "message_delta", "delta": ending, "usage": usage}, "message_delta"), False
    yield _sse({"type": "message_stop"}, "message_stop"), False


# --- the app ------------------------------------------------------------------------------


def make_app(behaviour: Behaviour) -> Starlette:
    """The Starlette app: the two model endpoints, `/health` and `/stats`."""
    stats = Stats()

    async def body_of(request: Request) -> tuple[dict[str, Any], int] | None:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return None
        return body, max(1, len(raw) // 4)  # a rough prompt size: the body's length / 4

    async def stream(events: Iterator[tuple[bytes, bool]]) -> AsyncIterator[bytes]:
        with stats.track():
            await asyncio.sleep(behaviour.latency)
            for event, paced in events:
                if paced and behaviour.tokens_per_second:
                    await asyncio.sleep(1 / behaviour.tokens_per_second)
                yield event

    async def wait(reply: Reply) -> None:
        # A non-streamed reply comes whole: after the latency and all its words' pacing.
        with stats.track():
            pacing = behaviour.tokens_per_second
            words_time = len(reply.text.split()) / pacing if pacing else 0.0
            await asyncio.sleep(behaviour.latency + words_time)

    async def chat_completions(request: Request) -> Response:
        parsed = await body_of(request)
        if parsed is None:
            return JSONResponse({"error": {**BAD_REQUEST, "param": None, "code": None}}, 400)
        body, prompt_tokens = parsed
        names = [tool["function"]["name"] for tool in body.get("tools") or []]
        reply = plan(behaviour, body["messages"], names)
        model = str(body.get("model", ""))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = openai_events(reply, model, prompt_tokens, include_usage)
            return StreamingResponse(stream(events), media_type="text/event-stream")
        await wait(reply)
        return JSONResponse(openai_completion(reply, model, prompt_tokens))

    async def messages(request: Request) -> Response:
        parsed = await body_of(request)
        if parsed is None:
            return JSONResponse({"type": "error", "error": BAD_REQUEST}, 400)
        body, input_tokens = parsed
        names = [tool["name"] for tool in body.get("tools") or []]
        reply = plan(behaviour, body["messages"], names)
        model = str(body.get("model", ""))
        if body.get("stream"):
            events = anthropic_events(reply, model, input_tokens)
            return StreamingResponse(stream(events), media_type="text/event-stream")
        await wait(reply)
        return JSONResponse(anthropic_message(reply, model, input_tokens))

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def report(request: Request) -> Response:
        counts = {"requests": stats.requests, "in_flight": stats.in_flight}
        return JSONResponse({**counts, "max_in_flight": stats.max_in_flight})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/stats", report, methods=["GET"]),
    ]
    return Starlette(routes=routes)


# --- serving ------------------------------------------------------------------------------


def config(behaviour: Behaviour, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    """uvicorn's settings for many concurrent clients: a deep backlog, no connection limit."""
    return uvicorn.Config(
        make_app(behaviour),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        lifespan="off",
        backlog=4096,
        limit_concurrency=None,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )


def url(server: uvicorn.Server) -> str:
    """The base URL of a started server (its real port when it was asked for port 0)."""
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://{server.config.host}:{port}"


class _Announcing(uvicorn.Server):
    """A uvicorn server that prints its URL once it accepts connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"listening on {url(self)}", flush=True)


@contextmanager
def running(behaviour: Behaviour, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve on a free port in a background thread; yield the base URL, stop on exit."""
    server = uvicorn.Server(config(behaviour, host))
    thread = threading.Thread(target=server.run, name="fakemodel", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the fake model server did not start")
        time.sleep(0.01)
    try:
        yield url(server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _rounds(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected positive counts like 1,1, not {text!r}")
    return tuple(int(part) for part in parts)


def _object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    raise argparse.ArgumentTypeError(f"expected a JSON object, not {text!r}")


def main(argv: list[str] | None = None) -> None:
    """Run the server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.fakemodel", description="A fake model server for benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=Behaviour.latency, help="seconds")
    parser.add_argument("--tokens-per-second", type=float, default=0.0, help="0: no pacing")
    parser.add_argument("--answer", default=Behaviour.answer, help="the final text")
    parser.add_argument("--tools", type=_rounds, default=Behaviour.tools, help='say 2,1; "": none')
    parser.add_argument("--tool-name", default=None, help="default: the request's first tool")
    parser.add_argument("--tool-args", type=_object, default={}, help="a JSON object")
    options = vars(parser.parse_args(argv))
    host, port = options.pop("host"), options.pop("port")
    behaviour = Behaviour(**options)  # the other options are named as its fields
    # uvicorn shuts down gracefully, then raises the signal again for the handler it
    # found; an ignoring handler makes that second delivery a clean exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    _Announcing(config(behaviour, host, port)).run()


if __name__ == "__main__":
    main()
