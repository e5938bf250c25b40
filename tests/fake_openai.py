"""A local Chat Completions server for tests: real HTTP, real SSE, scripted replies.

It speaks the wire protocol of `POST /v1/chat/completions` as the API reference
describes it: a `chat.completion` object, or (with `"stream": true`) a series of
`data: {chat.completion.chunk}` events ending with `data: [DONE]`, plus a final
usage chunk with empty `choices` when `stream_options.include_usage` is set;
errors as `{"error": {"message", "type", "param", "code"}}` with rate-limit
headers. Replies come from a queue (`reply`), so a test decides each one; every
request is recorded (`requests`) with its exact JSON body and headers.

    with FakeOpenAI() as server:
        server.reply(completion(content="hi"))
        ... OpenAI(base_url=server.url) ...
        assert server.requests[0].body["model"] == "fake-model"
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED = 1_760_000_000
FINGERPRINT = "fp_fake0001"


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any
    peer: tuple[str, int] | None = None  # the client's end of the connection


@dataclass(frozen=True)
class Completion:
    """A non-streamed reply: the `chat.completion` object (see `completion`)."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """A streamed reply: the deltas of choice 0, its finish reason, and the usage.

    `error` is sent as an error event after the deltas (the stream then stops);
    `cut` closes the connection after the deltas, mid-body, with no finish;
    `cut_after_done` closes it after `[DONE]`, before the body's end;
    `pace` is the wait in seconds between two of the stream's events, as a model's
    tokens come apart in time.
    """

    deltas: tuple[dict[str, Any], ...]
    finish_reason: str | None = "stop"
    usage: dict[str, Any] | None = None
    model: str = "fake-model"
    error: dict[str, Any] | None = None
    cut: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    pace: float = 0.0
    cut_after_done: bool = False


@dataclass(frozen=True)
class Error:
    """An error status with the API's error body and any headers (say, `retry-after`).

    A `str` body is sent as is, as HTML: what a proxy in front of the API might say.
    """

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Wait `seconds` before answering with `then`: for client timeouts."""

    seconds: float
    then: Completion | Stream | Error


@dataclass(frozen=True)
class Gated:
    """Wait until the test opens `gate` before answering with `then`: for calls that
    must all be in flight at once."""

    gate: threading.Event
    then: Completion | Stream | Error


Reply = Completion | Stream | Error | Hang | Gated


# --- building wire objects ----------------------------------------------------------------------


def token_usage(
    prompt: int = 10, completion: int = 5, cached: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    """A `usage` object, with the details OpenAI includes."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def tool_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    """A complete tool call as it appears on a non-streamed assistant message."""
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(
    content: str | None = None,
    *,
    tool_calls: Iterable[dict[str, Any]] = (),
    finish_reason: str = "stop",
    refusal: str | None = None,
    model: str = "fake-model",
    usage: dict[str, Any] | None = None,
    id: str = "chatcmpl-fake",
) -> Completion:
    """A `chat.completion` reply with one choice."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": refusal,
        "annotations": [],
    }
    calls = list(tool_calls)
    if calls:
        message["tool_calls"] = calls
    body = {
        "id": id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage if usage is not None else token_usage(),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    return Completion(body)


def text_deltas(*pieces: str) -> tuple[dict[str, Any], ...]:
    """Content deltas, one per piece."""
    return tuple({"content": p} for p in pieces)


def call_start(index: int, id: str, name: str) -> dict[str, Any]:
    """The first fragment of a streamed tool call: its id and name, no arguments yet."""
    return {
        "tool_calls": [
            {
                "index": index,
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
        ]
    }


def call_arguments(index: int, fragment: str) -> dict[str, Any]:
    """A later fragment of a streamed tool call: a piece of its arguments."""
    return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}


def error_body(
    message: str, type: str = "invalid_request_error", code: str | None = None, param: Any = None
) -> dict[str, Any]:
    """The API's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error(
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    param: Any = None,
    headers: dict[str, str] | None = None,
) -> Error:
    """An error reply, typed the way the API types that status."""
    if status == 429:
        kind, code = type or "requests", code or "rate_limit_exceeded"
    elif status < 500:
        kind = type or "invalid_request_error"
    else:
        kind = type or "server_error"
    return Error(status, error_body(message, kind, code, param), dict(headers or {}))


# --- the server ---------------------------------------------------------------------------------


class FakeOpenAI:
    """The server: start it (or use `with`), queue replies, read what it received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._received: list[Received] = []
        self._ids = itertools.count(1)
        self._http = _Server(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.02,), name="fake-openai"
        )

    @property
    def url(self) -> str:
        """The base URL to give the SDK."""
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def reply(self, *replies: Reply) -> None:
        """Queue replies, answered in order, one per request."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[Received]:
        """Every request received so far, in order."""
        with self._lock:
            return list(self._received)

    @property
    def pending(self) -> int:
        """Replies queued but not yet sent."""
        with self._lock:
            return len(self._replies)

    def _take(self, received: Received, problem: str | None) -> tuple[Reply, str]:
        """Record the request and pick its reply: a 400 if the API would reject it."""
        with self._lock:
            self._received.append(received)
            serial = next(self._ids)
            if problem is not None:
                return error(400, problem, param="messages"), f"req_fake{serial:04d}"
            reply = self._replies.popleft() if self._replies else None
        if reply is None:  # a 400, so the caller fails at once instead of retrying
            reply = error(400, "fake server: no scripted reply left", type="fake_server_error")
        return reply, f"req_fake{serial:04d}"


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many clients may connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up early is expected in tests, not noise.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_GET(self) -> None:
            self._not_found()

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._not_found()
                return
            received = Received("POST", self.path, headers, body, self.client_address[:2])
            reply, request_id = server._take(received, _invalid(body))
            if isinstance(reply, Hang):
                time.sleep(reply.seconds)
                reply = reply.then
            elif isinstance(reply, Gated):
                reply.gate.wait(10)
                reply = reply.then
            if isinstance(reply, Error):
                self._json(reply.status, reply.body, request_id, reply.headers)
            elif isinstance(reply, Completion):
                self._json(200, reply.body, request_id, reply.headers)
            elif isinstance(body, dict) and body.get("stream"):
                self._stream(reply, body, request_id)
            else:  # a test mistake: say so at once rather than invent an answer
                mistake = "fake server: a stream was scripted for a request without stream"
                self._json(400, error_body(mistake, "fake_server_error"), request_id, {})

        def _not_found(self) -> None:
            message = f"Invalid URL ({self.command} {self.path})"
            self._json(404, error_body(message), "req_fake_404", {})

        def _headers(self, status: int, request_id: str, extra: dict[str, str]) -> None:
            self.send_response(status)
            limited = status == 429
            for name, value in {
                "x-request-id": request_id,
                "openai-processing-ms": "7",
                "x-ratelimit-limit-requests": "5000",
                "x-ratelimit-remaining-requests": "0" if limited else "4999",
                "x-ratelimit-reset-requests": "12ms",
                "x-ratelimit-limit-tokens": "160000",
                "x-ratelimit-remaining-tokens": "0" if limited else "159976",
                "x-ratelimit-reset-tokens": "9ms",
                **extra,
            }.items():
                self.send_header(name, value)

        def _json(self, status: int, body: Any, request_id: str, extra: dict[str, str]) -> None:
            raw = isinstance(body, str)
            data = body.encode() if raw else json.dumps(body).encode()
            self._headers(status, request_id, extra)
            self.send_header("content-type", "text/html" if raw else "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, reply: Stream, body: dict[str, Any], request_id: str) -> None:
            self._headers(200, request_id, reply.headers)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            for n, event in enumerate(events(reply, with_usage)):
                if reply.pace and n:
                    time.sleep(reply.pace)
                self._chunk(f"data: {event}\n\n".encode())
            if reply.cut or reply.cut_after_done:
                self.close_connection = True
                return  # no terminating chunk: the body is incomplete
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def events(reply: Stream, with_usage: bool) -> Iterator[str]:
    """The SSE data lines of a streamed reply, `[DONE]` last."""

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        data: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "obfuscation": "Xk3",  # padding the API adds unless include_obfuscation is false
        }
        if with_usage:
            data["usage"] = usage  # null on every chunk but the last
        return json.dumps(data)

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    # The role comes first: alone before text, or with a tool call's first fragment.
    deltas = list(reply.deltas)
    if deltas and "tool_calls" in deltas[0]:
        deltas[0] = {"role": "assistant", "content": None, "refusal": None, **deltas[0]}
    else:
        deltas.insert(0, {"role": "assistant", "content": "", "refusal": None})
    for delta in deltas:
        yield chunk([choice(delta)])
    if reply.error is not None:
        yield json.dumps(reply.error)
        return
    if reply.cut:
        return
    yield chunk([choice({}, reply.finish_reason)])
    if with_usage:
        yield chunk([], reply.usage if reply.usage is not None else token_usage())
    yield "[DONE]"


def _invalid(body: Any) -> str | None:
    """What the real API would reject in this request body, as its error message."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    if not isinstance(body.get("model"), str):
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must contain at least one message"
    if body.get("stream_options") is not None and not body.get("stream"):
        return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    if "parallel_tool_calls" in body and not body.get("tools"):
        return "'parallel_tool_calls' is only allowed when 'tools' are specified."
    open_ids: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if open_ids and role != "tool":
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_ids)}"
            )
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                if not isinstance(call.get("function", {}).get("arguments"), str):
                    return f"Invalid type for 'messages[{i}].tool_calls.function.arguments'"
                open_ids.append(call["id"])
            if message.get("content") is None and not message.get("tool_calls"):
                return f"Invalid value for 'messages[{i}].content': expected a string"
        elif role == "tool":
            if message.get("tool_call_id") not in open_ids:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."
                )
            open_ids.remove(message["tool_call_id"])
        elif role not in ("system", "developer", "user"):
            return f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', ..."
    if open_ids:
        return f"tool_call_ids did not have response messages: {', '.join(open_ids)}"
    return None
