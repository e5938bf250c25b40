"""A local stand-in for the Anthropic Messages API, served over real HTTP.

`FakeAnthropic` listens on 127.0.0.1 (port 0) and answers `POST /v1/messages`
from a queue of scripted replies, recording every request's headers and JSON body
so tests can assert on the exact wire. A scripted `Turn` is a full Message object:
served as JSON when the request has no `stream`, and as server-sent events
(message_start, a ping, content_block_start / content_block_delta /
content_block_stop per block, message_delta, message_stop) when it has
`stream: true`, as the API does. `Events` serves a hand-written event list
(say, one that ends in an `error` event) and `Failure` an HTTP error with the
API's error body and any headers (retry-after, x-should-retry).

Like the real API, it checks what it can check cheaply and answers 400
`invalid_request_error` otherwise: required fields, alternating roles starting
with `user`, and every `tool_result` answering a `tool_use` of the assistant
turn just before it, at the start of the user turn.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


# --- building replies ------------------------------------------------------------------


def usage(
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read: int = 0,
    cache_write: int = 0,
    thinking_tokens: int | None = None,
) -> dict[str, Any]:
    """A usage object as the API reports it."""
    data: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "service_tier": "standard",
    }
    if thinking_tokens is not None:
        data["output_tokens_details"] = {"thinking_tokens": thinking_tokens}
    return data


def text(value: str) -> dict[str, Any]:
    """A text content block."""
    return {"type": "text", "text": value}


def tool_use(name: str, input: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    """A tool_use content block; ids look like the API's."""
    return {
        "type": "tool_use",
        "id": id or f"toolu_{next(_ids):024d}",
        "name": name,
        "input": input,
    }


def thinking(value: str, signature: str) -> dict[str, Any]:
    """A thinking content block with its signature."""
    return {"type": "thinking", "thinking": value, "signature": signature}


def redacted_thinking(data: str) -> dict[str, Any]:
    """A redacted_thinking content block: opaque, encrypted data."""
    return {"type": "redacted_thinking", "data": data}


def message(
    *content: dict[str, Any],
    stop_reason: str | None = None,
    model: str = "claude-fake-20260101",
    usage_: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A full Message object; the stop reason follows from the content unless given."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {
        "id": f"msg_{next(_ids):024d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_ or usage(),
    }


def error_body(
    error_type: str, text_: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The API's error object; `details` carries a machine-readable `error_code`."""
    error: dict[str, Any] = {"type": error_type, "message": text_}
    if details is not None:
        error["details"] = details
    return {"type": "error", "error": error, "request_id": f"req_{next(_ids):024d}"}


def error_event(error_type: str, text_: str) -> tuple[str, dict[str, Any]]:
    """An `error` event, as the API sends one mid-stream (say, `overloaded_error`)."""
    return "error", {"type": "error", "error": {"type": error_type, "message": text_}}


def _chunks(value: str, size: int) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def stream_events(full: dict[str, Any], chunk: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events that stream `full`, a Message, as the API sends them."""
    start_usage = dict(full["usage"])
    final_output = start_usage.get("output_tokens", 0)
    start_usage["output_tokens"] = 1
    start_usage.pop("output_tokens_details", None)
    shell = {**full, "content": [], "stop_reason": None, "stop_sequence": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {**shell, "usage": start_usage}}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(full["content"]):
        kind = block["type"]
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"], chunk)]
        elif kind == "tool_use":
            opening = {**block, "input": {}}
            raw = json.dumps(block["input"]) if block["input"] else ""
            deltas = [{"type": "input_json_delta", "partial_json": c} for c in _chunks(raw, chunk)]
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": c} for c in _chunks(block["thinking"], chunk)
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:  # redacted_thinking and anything else arrive whole
            opening = block
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta_usage: dict[str, Any] = {"output_tokens": final_output}
    for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        if key in full["usage"]:
            delta_usage[key] = full["usage"][key]
    if "output_tokens_details" in full["usage"]:
        delta_usage["output_tokens_details"] = full["usage"]["output_tokens_details"]
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": full["stop_reason"], "stop_sequence": None},
                "usage": delta_usage,
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


@dataclass(frozen=True)
class Turn:
    """A full Message, served as JSON or as a stream, whichever the request asks for."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    gate: threading.Event | None = None  # answer once the test opens it (10 s at most)


@dataclass(frozen=True)
class Events:
    """A hand-written stream of (event name, data) pairs, served as SSE with status 200."""

    events: list[tuple[str, dict[str, Any]]]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """An HTTP error with the API's error body."""

    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] | None = None


Reply = Turn | Events | Failure


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    peer: tuple[str, int] | None = None  # the client's end of the connection


# --- the server ------------------------------------------------------------------------


class FakeAnthropic:
    """The Messages API on 127.0.0.1; `script(...)` replies, then read `requests`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL to give the SDK."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *replies: Reply) -> FakeAnthropic:
        """Queue replies, answered in order, one per request."""
        with self._lock:
            self._replies.extend(replies)
        return self

    def bodies(self) -> list[Any]:
        """The JSON body of every request so far."""
        return [r.body for r in self.requests]

    def start(self) -> FakeAnthropic:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    def _take(self, recorded: Recorded) -> Reply | None:
        with self._lock:
            self.requests.append(recorded)
            return self._replies.popleft() if self._replies else None


def serve() -> Iterator[FakeAnthropic]:
    """A started server, closed afterwards: iterate it (or `yield from` it) in a fixture."""
    fake = FakeAnthropic().start()
    try:
        yield fake
    finally:
        fake.close()


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many clients may connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is fine
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the recorded requests, not the server's log."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        recorded = Recorded("POST", self.path, headers, body, raw, self.client_address[:2])
        reply = self.fake._take(recorded)
        problem = _check(self.path, headers, body)
        if problem is not None:
            status, kind, text_ = problem
            self._json(status, error_body(kind, text_))
        elif reply is None:
            self._json(500, error_body("api_error", "fake server: no scripted reply left"))
        elif isinstance(reply, Failure):
            body_ = error_body(reply.error_type, reply.message, reply.details)
            self._json(reply.status, body_, reply.headers)
        elif isinstance(reply, Events):
            self._sse(reply.events, reply.headers)
        else:
            time.sleep(reply.delay)
            if reply.gate is not None:
                reply.gate.wait(10)
            if body.get("stream"):
                self._sse(stream_events(reply.body), reply.headers)
            else:
                self._json(200, reply.body, reply.headers)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("request-id", f"req_{next(_ids):024d}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _sse(self, events: list[tuple[str, dict[str, Any]]], headers: dict[str, str]) -> None:
        """Server-sent events in a chunked body, one chunk per event, as the API streams."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_{next(_ids):024d}")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        for name, data in events:
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def _check(path: str, headers: dict[str, str], body: Any) -> tuple[int, str, str] | None:
    """What the real API would reject before the model runs, as (status, type, message)."""
    if path.split("?")[0] != "/v1/messages":
        return 404, "not_found_error", f"Not found: {path}"
    if "x-api-key" not in headers and "authorization" not in headers:
        return 401, "authentication_error", "x-api-key header is required"
    if "anthropic-version" not in headers:
        return 400, "invalid_request_error", "anthropic-version: header is required"
    if not isinstance(body, dict):
        return 400, "invalid_request_error", "request body must be a JSON object"
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return 400, "invalid_request_error", f"{key}: Field required"
    return _check_messages(body["messages"])


def _check_messages(messages: Any) -> tuple[int, str, str] | None:
    bad = 400, "invalid_request_error"
    if not isinstance(messages, list) or not messages:
        return (*bad, "messages: at least one message is required")
    if messages[0].get("role") != "user":
        return (*bad, "messages: first message must use the 'user' role")
    previous_uses: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if i and role == messages[i - 1].get("role"):
            return (*bad, 'messages: roles must alternate between "user" and "assistant"')
        content = msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return (*bad, f"messages.{i}: content must be non-empty")
        kinds = [b.get("type") for b in blocks]
        if role == "user":
            answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            if answered - previous_uses:
                return (*bad, f"messages.{i}: unexpected `tool_use_id` in `tool_result` blocks")
            if previous_uses - answered:
                return (*bad, f"messages.{i}: `tool_use` ids were found without `tool_result`")
            firsts = kinds[: len(answered)]
            if answered and any(k != "tool_result" for k in firsts):
                return (*bad, f"messages.{i}: tool_result blocks must come first")
            previous_uses = set()
        else:
            if "tool_result" in kinds:
                return (*bad, f"messages.{i}: tool_result blocks belong in user messages")
            previous_uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        for j, b in enumerate(blocks):
            if b.get("type") == "text" and not b.get("text"):
                return (*bad, f"messages.{i}.content.{j}: text content blocks must be non-empty")
            if b.get("type") == "tool_use" and not isinstance(b.get("input"), dict):
                return (*bad, f"messages.{i}.content.{j}.input: Input should be a valid dict")
    return None
