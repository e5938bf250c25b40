"""A local stand-in for the Gemini API's generateContent, served over real HTTP.

`FakeGemini` listens on 127.0.0.1 (port 0) and answers
`POST /v1beta/models/{model}:generateContent` with a `GenerateContentResponse`
as JSON, and `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` with the
same response split into server-sent events (`data: {GenerateContentResponse}`),
text in small pieces, each function call whole, `finishReason` and the full
`usageMetadata` on the last event, as the API streams. Replies come from a queue
(`script`); every request is recorded with its path, headers and JSON body.

Like the real API it checks what it can check cheaply and answers 400
`INVALID_ARGUMENT` otherwise: an API key, non-empty `contents` with `user` and
`model` roles, as many `functionResponse` parts as the model turn before had
`functionCall` parts, and, as Gemini 3 does, every function call it issued with
a `thoughtSignature` sent back in the history with that signature, unchanged.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(
    r"^/v1beta/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


# --- building replies ------------------------------------------------------------------


def text(value: str, signature: str | None = None, thought: bool = False) -> dict[str, Any]:
    """A text part; `thought=True` makes it a thought summary."""
    part: dict[str, Any] = {"text": value}
    if thought:
        part["thought"] = True
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def function_call(name: str, args: dict[str, Any], signature: str | None = None) -> dict[str, Any]:
    """A functionCall part, with the thoughtSignature Gemini puts on it when thinking."""
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def usage(
    prompt: int = 10, candidates: int = 5, thoughts: int | None = None, cached: int | None = None
) -> dict[str, Any]:
    """A usageMetadata object; the total counts thought tokens too."""
    data: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + (thoughts or 0),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts is not None:
        data["thoughtsTokenCount"] = thoughts
    if cached is not None:
        data["cachedContentTokenCount"] = cached
    return data


def response(
    *parts: dict[str, Any],
    finish_reason: str = "STOP",
    usage_: dict[str, Any] | None = None,
    model_version: str = "gemini-fake-001",
) -> dict[str, Any]:
    """A GenerateContentResponse with one candidate."""
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": list(parts)},
                "finishReason": finish_reason,
                "index": 0,
            }
        ],
        "usageMetadata": usage_ or usage(),
        "modelVersion": model_version,
        "responseId": "fake-response-0001",
    }


def stream_events(full: dict[str, Any], chunk: int = 6) -> list[dict[str, Any]]:
    """The SSE payloads that stream `full`: text in pieces, function calls whole."""
    candidate = full["candidates"][0]
    pieces: list[dict[str, Any]] = []
    for part in candidate["content"]["parts"]:
        if part.get("text"):
            value = part["text"]
            for start in range(0, len(value), chunk):
                piece = {**part, "text": value[start : start + chunk]}
                if start + chunk < len(value):
                    piece.pop("thoughtSignature", None)  # the signature rides on the last piece
                pieces.append(piece)
        else:
            pieces.append(part)
    prompt_only = {"promptTokenCount": full["usageMetadata"]["promptTokenCount"]}
    events = [
        {
            "candidates": [{"content": {"role": "model", "parts": [piece]}, "index": 0}],
            "usageMetadata": {**prompt_only, "totalTokenCount": prompt_only["promptTokenCount"]},
            "modelVersion": full["modelVersion"],
            "responseId": full["responseId"],
        }
        for piece in pieces
    ]
    if not events:
        return [full]
    events[-1]["candidates"][0]["finishReason"] = candidate["finishReason"]
    events[-1]["usageMetadata"] = full["usageMetadata"]
    return events


@dataclass(frozen=True)
class Turn:
    """A GenerateContentResponse, served as JSON or as a stream, as the path asks."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """An HTTP error with the API's error body (`{"error": {code, message, status}}`)."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


Reply = Turn | Failure


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    path: str
    query: str
    headers: dict[str, str]
    body: Any


# --- the server ------------------------------------------------------------------------


class FakeGemini:
    """generateContent on 127.0.0.1; `script(...)` replies, then read `requests`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._replies: deque[Reply] = deque()
        self._signed: dict[str, str] = {}  # canonical functionCall JSON -> its signature
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL to give LiteLLM as `api_base`."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1beta"

    def script(self, *replies: Reply) -> FakeGemini:
        """Queue replies, answered in order, one per request."""
        with self._lock:
            self._replies.extend(replies)
        return self

    def bodies(self) -> list[Any]:
        """The JSON body of every request so far."""
        return [r.body for r in self.requests]

    def start(self) -> FakeGemini:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    def _take(self, recorded: Recorded) -> tuple[Reply | None, str | None]:
        with self._lock:
            self.requests.append(recorded)
            problem = _check(recorded, self._signed)
            if problem is not None:
                return None, problem
            reply = self._replies.popleft() if self._replies else None
            if isinstance(reply, Turn):
                for part in reply.body["candidates"][0]["content"]["parts"]:
                    if "functionCall" in part and "thoughtSignature" in part:
                        self._signed[_canonical(part["functionCall"])] = part["thoughtSignature"]
            return reply, None


def serve() -> Iterator[FakeGemini]:
    """A started server, closed afterwards: iterate it (or `yield from` it) in a fixture."""
    fake = FakeGemini().start()
    try:
        yield fake
    finally:
        fake.close()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is fine
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGemini
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply, problem = self.fake._take(Recorded(path, query, headers, body))
        if problem is not None:
            status = 404 if problem.startswith("Not found") else 400
            status = 403 if "API key" in problem else status
            self._json(status, _error(status, problem))
        elif reply is None:
            self._json(500, _error(500, "fake server: no scripted reply left"))
        elif isinstance(reply, Failure):
            self._json(reply.status, _error(reply.status, reply.message), reply.headers)
        elif path.endswith(":streamGenerateContent"):
            self._sse(stream_events(reply.body))
        else:
            self._json(200, reply.body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=UTF-8")
        self.send_header("content-length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _sse(self, events: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for event in events:
            chunk = f"data: {json.dumps(event)}\r\n\r\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}


def _field(part: dict[str, Any], camel: str) -> Any:
    """A part's field by its JSON name or its proto name (`functionCall`, `function_call`):
    the API accepts both, and LiteLLM sends the latter."""
    snake = re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), camel)
    return part.get(camel, part.get(snake))


def _canonical(call: dict[str, Any]) -> str:
    return json.dumps({"name": call.get("name"), "args": call.get("args")}, sort_keys=True)


def _check(request: Recorded, signed: dict[str, str]) -> str | None:
    """What the real API would reject before the model runs, as its error message."""
    match = _PATH.match(request.path)
    if match is None:
        return f"Not found: {request.path}"
    if match["method"] == "streamGenerateContent" and "alt=sse" not in request.query:
        return "fake server: streamGenerateContent without alt=sse is not served"
    if "x-goog-api-key" not in request.headers and "key=" not in request.query:
        return "Method doesn't allow unregistered callers. Please use an API key."
    body = request.body
    if not isinstance(body, dict) or not body.get("contents"):
        return "* GenerateContentRequest.contents: contents is not specified"
    calls = 0
    for i, content in enumerate(body["contents"]):
        parts = content.get("parts")
        if content.get("role") not in ("user", "model") or not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{i}]: role or parts are invalid"
        answers = sum(_field(p, "functionResponse") is not None for p in parts)
        if answers and answers != calls:
            return (
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn."
            )
        calls = 0
        for j, part in enumerate(parts):
            call = _field(part, "functionCall")
            if call is None or content["role"] != "model":
                continue
            calls += 1
            wanted, sent = signed.get(_canonical(call)), _field(part, "thoughtSignature")
            if wanted is not None and sent is None:
                return (
                    "Function call is missing a thought_signature in functionCall parts. "
                    f"Additional data, function call `default_api:{call.get('name')}`, "
                    f"position {j + 1}."
                )
            if wanted is not None and sent != wanted:
                return "Corrupted thought signature."
    return None
