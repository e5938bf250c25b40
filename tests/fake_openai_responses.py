"""A local Responses API server for tests: real HTTP, real SSE, scripted replies.

It speaks `POST /v1/responses` as the API reference describes it: the `response`
object, or (with `"stream": true`) server-sent events, each an `event: <type>` line
and a `data: {...}` line carrying the same `type` and a growing `sequence_number`:
`response.created` and `response.in_progress`; per output item
`response.output_item.added`, its content or summary part, its deltas and `.done`
events, `response.output_item.done`; and last `response.completed` (or
`.incomplete`, `.failed`) with the usage. An `Answer` is scripted once and sent
either way, as the request asks. Requests the API would reject (unknown parameters,
a tool output without its call, a reasoning item that cannot be resolved) get the
API's error instead.

The queue of replies, the record of requests, errors with their headers, `Hang` and
the HTTP plumbing are those of tests/fake_openai.py: this server extends it with
the /responses route.

    with FakeOpenAIResponses() as server:
        server.reply(wire.text_answer("Hel", "lo"))
        ... OpenAI(base_url=server.url).responses.create(...) ...
        assert server.requests[0].body["store"] is False
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests import fake_openai
from tests.fake_openai import CREATED, Error, FakeOpenAI, Hang, Received, error, error_body

__all__ = [
    "Answer",
    "Error",
    "FakeOpenAIResponses",
    "Hang",
    "answer",
    "error",
    "error_body",
    "error_event",
    "events",
    "function_call",
    "message",
    "reasoning",
    "refusal",
    "response_object",
    "text_answer",
    "usage",
]

RESPONSE_ID = "resp_fake0001"
ENCRYPTED = "gAAAAABfakeEncryptedReasoning0001=="
# Top-level parameters of `POST /v1/responses`; anything else is an unknown parameter.
PARAMETERS = frozenset(
    ("background", "conversation", "include", "input", "instructions", "max_output_tokens",
     "max_tool_calls", "metadata", "model", "parallel_tool_calls", "previous_response_id",
     "prompt", "prompt_cache_key", "reasoning", "safety_identifier", "service_tier", "store",
     "stream", "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs",
     "top_p", "truncation", "user")
)  # fmt: skip
_CONTENT = {
    "assistant": ("output_text", "refusal"),
    "user": ("input_text", "input_image", "input_file"),
}


@dataclass(frozen=True)
class Answer:
    """A scripted response: its output items, and how a stream delivers them.

    `pieces` are `(output_index, fragment)` pairs in the order a stream sends them:
    pieces of a message's text, a function call's arguments or a reasoning item's
    summary. By default each item's whole text is one piece, item after item. An
    item opens at its first piece (after any earlier items) and closes after its
    last, so pieces of different items may interleave.

    `status` "incomplete" reports `incomplete_reason`; "failed" reports `error`.
    A stream ends with `error_event` instead of its final event when given, and
    `cut` closes the connection mid-body before the final event.
    """

    output: tuple[dict[str, Any], ...]
    pieces: tuple[tuple[int, str], ...] | None = None
    status: str = "completed"
    incomplete_reason: str | None = None
    error: dict[str, Any] | None = None
    error_event: dict[str, Any] | None = None
    cut: bool = False
    usage: dict[str, Any] | None = None
    model: str = "fake-model"
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, item in enumerate(self.output):
            sent = "".join(p for i, p in self.streamed_pieces() if i == index)
            if sent != _streamed_text(item):
                raise ValueError(f"pieces of output item {index} do not add up to its text")

    def streamed_pieces(self) -> tuple[tuple[int, str], ...]:
        """The pieces a stream sends, in order."""
        if self.pieces is not None:
            return self.pieces
        return tuple((i, t) for i, item in enumerate(self.output) if (t := _streamed_text(item)))


Reply = Answer | Error | Hang


# --- building wire objects ----------------------------------------------------------------------


def usage(input: int = 10, output: int = 5, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """A `usage` object; `input_tokens` counts the cached tokens too."""
    return {
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    }


def message(text: str, id: str = "msg_fake0001") -> dict[str, Any]:
    """An assistant message output item holding one `output_text` part."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return _message(id, part)


def refusal(text: str, id: str = "msg_fake0001") -> dict[str, Any]:
    """An assistant message output item holding one `refusal` part."""
    return _message(id, {"type": "refusal", "refusal": text})


def _message(id: str, part: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }


def function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A `function_call` output item; `arguments` is the JSON text the model wrote."""
    return {
        "id": f"fc_{call_id}",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def reasoning(
    id: str = "rs_fake0001", summary: str = "", encrypted: str = ENCRYPTED
) -> dict[str, Any]:
    """A `reasoning` output item with its encrypted content and an optional summary."""
    parts = [{"type": "summary_text", "text": summary}] if summary else []
    return {"id": id, "type": "reasoning", "summary": parts, "encrypted_content": encrypted}


def answer(*output: dict[str, Any], **options: Any) -> Answer:
    """A response with these output items (see `Answer` for the options)."""
    return Answer(tuple(output), **options)


def text_answer(*pieces: str, **options: Any) -> Answer:
    """A response of one message whose text streams in these pieces."""
    return Answer((message("".join(pieces)),), tuple((0, p) for p in pieces), **options)


def error_event(message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The data of an `error` stream event, as the reference shows it."""
    return {"code": code, "message": message, "param": param}


def response_object(
    reply: Answer,
    request: dict[str, Any],
    *,
    status: str | None = None,
    output: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The `response` object answering `request`, whose settings it echoes."""
    status = status or reply.status
    reasoning = request.get("reasoning") or {}
    incomplete = {"reason": reply.incomplete_reason} if status == "incomplete" else None
    done = status in ("completed", "incomplete", "failed")
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": reply.error if status == "failed" else None,
        "incomplete_details": incomplete,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": reply.model,
        "output": list(reply.output) if output is None else output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools", []),
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation", "disabled"),
        "usage": (reply.usage or usage()) if done else None,
        "user": None,
        "metadata": request.get("metadata") or {},
    }


# --- streams ------------------------------------------------------------------------------------


def events(reply: Answer, request: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The stream of `reply`: (event type, data) pairs, numbered by `sequence_number`."""
    for number, (kind, data) in enumerate(_events(reply, request)):
        yield kind, {"type": kind, "sequence_number": number, **data}


def _events(reply: Answer, request: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    started = response_object(reply, request, status="in_progress", output=[])
    yield "response.created", {"response": started}
    yield "response.in_progress", {"response": started}
    items = reply.output
    left = Counter(i for i, _ in reply.streamed_pieces())
    opened = 0

    def open_through(last: int) -> Iterator[tuple[str, dict[str, Any]]]:
        nonlocal opened
        while opened <= last:
            index, opened = opened, opened + 1
            yield from _opened(index, items[index])
            if not left[index]:
                yield from _closed(index, items[index])

    for index, piece in reply.streamed_pieces():
        yield from open_through(index)
        yield _delta(index, items[index], piece)
        left[index] -= 1
        if not left[index]:
            yield from _closed(index, items[index])
    yield from open_through(len(items) - 1)
    if reply.error_event is not None:
        yield "error", reply.error_event
    elif not reply.cut:
        final = response_object(reply, request)
        yield f"response.{reply.status}", {"response": final}


def _streamed_text(item: dict[str, Any]) -> str:
    """What a stream sends of an item in deltas: text, refusal, arguments or summary."""
    if item["type"] == "message":
        part = item["content"][0]
        return str(part.get("text", part.get("refusal", "")))
    if item["type"] == "function_call":
        return str(item["arguments"])
    return "".join(s["text"] for s in item.get("summary", ()))


def _at(index: int, item: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {"item_id": item["id"], "output_index": index, **data}


def _opened(index: int, item: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = item["type"]
    start = {**item, "status": "in_progress"}
    if kind == "message":
        start["content"] = []
    elif kind == "function_call":
        start["arguments"] = ""
    elif kind == "reasoning":  # the reference: encrypted_content may be incomplete here
        start = {
            **item,
            "summary": [],
            "encrypted_content": (item.get("encrypted_content") or "")[:8],
        }
    yield "response.output_item.added", {"output_index": index, "item": start}
    if kind == "message":
        part = {**item["content"][0]}
        part["text" if "text" in part else "refusal"] = ""
        yield "response.content_part.added", _at(index, item, content_index=0, part=part)
    elif kind == "reasoning" and item["summary"]:
        part = {"type": "summary_text", "text": ""}
        yield "response.reasoning_summary_part.added", _at(index, item, summary_index=0, part=part)


def _delta(index: int, item: dict[str, Any], piece: str) -> tuple[str, dict[str, Any]]:
    kind = item["type"]
    if kind == "function_call":
        return "response.function_call_arguments.delta", _at(
            index, item, delta=piece, obfuscation="x1"
        )
    if kind == "reasoning":
        return "response.reasoning_summary_text.delta", _at(
            index, item, summary_index=0, delta=piece, obfuscation="x1"
        )
    if "refusal" in item["content"][0]:
        return "response.refusal.delta", _at(index, item, content_index=0, delta=piece)
    return "response.output_text.delta", _at(
        index, item, content_index=0, delta=piece, logprobs=[], obfuscation="x1"
    )


def _closed(index: int, item: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = item["type"]
    if kind == "function_call":
        done = _at(index, item, arguments=item["arguments"])
        yield "response.function_call_arguments.done", done
    elif kind == "reasoning" and item["summary"]:
        part = item["summary"][0]
        yield (
            "response.reasoning_summary_text.done",
            _at(index, item, summary_index=0, text=part["text"]),
        )
        yield "response.reasoning_summary_part.done", _at(index, item, summary_index=0, part=part)
    elif kind == "message":
        part = item["content"][0]
        if "refusal" in part:
            done = _at(index, item, content_index=0, refusal=part["refusal"])
            yield "response.refusal.done", done
        else:
            done = _at(index, item, content_index=0, text=part["text"], logprobs=[])
            yield "response.output_text.done", done
        yield "response.content_part.done", _at(index, item, content_index=0, part=part)
    yield "response.output_item.done", {"output_index": index, "item": item}


# --- the server ---------------------------------------------------------------------------------


class FakeOpenAIResponses(FakeOpenAI):
    """The server: start it (or use `with`), queue replies, read what it received."""

    def __init__(self) -> None:
        super().__init__()
        self._http.RequestHandlerClass = _handler(self)


def _handler(server: FakeOpenAIResponses) -> type[BaseHTTPRequestHandler]:
    base: Any = fake_openai._handler(server)  # its replies, headers and chunked writing

    class Handler(base):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = _parsed(self.rfile.read(length))
            if self.path.rstrip("/") != "/v1/responses":
                self._not_found()
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            received = Received("POST", self.path, headers, body, self.client_address[:2])
            problem = _invalid(body)
            reply, request_id = server._take(received, problem and problem.message)
            if problem is not None:
                reply = error(problem.status, problem.message, param=problem.param)
            if isinstance(reply, Hang):
                time.sleep(reply.seconds)
                reply = reply.then
            if isinstance(reply, Error):
                self._json(reply.status, reply.body, request_id, reply.headers)
            elif body.get("stream"):
                self._events(reply, body, request_id)
            else:
                self._json(200, response_object(reply, body), request_id, reply.headers)

        def _events(self, reply: Answer, body: dict[str, Any], request_id: str) -> None:
            self._headers(200, request_id, reply.headers)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for kind, data in events(reply, body):
                self._chunk(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            self.close_connection = reply.cut
            if not reply.cut:  # else no terminating chunk: the body is incomplete
                self._chunk(b"")

    return Handler


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


class _Rejected(Exception):
    """The API's answer to a request it will not take: a status, its message and param."""

    def __init__(self, status: int, message: str, param: str | None = "input") -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _invalid(body: Any) -> _Rejected | None:
    """What the real API would reject in this request, as its error."""
    try:
        _check(body)
    except _Rejected as rejected:
        return rejected
    return None


def _check(body: Any) -> None:
    if not isinstance(body, dict):
        raise _Rejected(400, "We could not parse the JSON body of your request.", None)
    for key in body:
        if key not in PARAMETERS:
            raise _Rejected(400, f"Unknown parameter: '{key}'.", key)
    if not isinstance(body.get("model"), str):
        raise _Rejected(400, "Missing required parameter: 'model'.", "model")
    items = body.get("input")
    if isinstance(items, str):
        return
    if not isinstance(items, list) or not items:
        raise _Rejected(400, "Missing required parameter: 'input'.")
    calls: list[str] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            _check_message(i, item)
        elif kind == "function_call":
            if not isinstance(item.get("arguments"), str):
                got = type(item.get("arguments")).__name__
                where = f"input[{i}].arguments"
                raise _Rejected(400, f"Invalid type for '{where}': expected a string, got {got}.")
            calls.append(item["call_id"])
        elif kind == "function_call_output":
            if item.get("call_id") not in calls:
                call_id = item.get("call_id")
                text = f"No tool call found for function call output with call_id {call_id}."
                raise _Rejected(400, text)
        elif kind == "reasoning":
            _check_reasoning(item, items[i + 1] if i + 1 < len(items) else {}, body.get("store"))
        else:
            raise _Rejected(400, f"Invalid value: '{kind}'.", f"input[{i}].type")
    answered = {item.get("call_id") for item in items if item.get("type") == "function_call_output"}
    for call_id in calls:
        if call_id not in answered:
            raise _Rejected(400, f"No tool output found for function call {call_id}.")


def _check_message(i: int, item: dict[str, Any]) -> None:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        supported = "'assistant', 'system', 'developer', and 'user'"
        text = f"Invalid value: '{role}'. Supported values are: {supported}."
        raise _Rejected(400, text, f"input[{i}].role")
    content = item.get("content")
    allowed = _CONTENT.get(str(role), _CONTENT["user"])
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if part.get("type") not in allowed:
            supported = ", ".join(f"'{a}'" for a in allowed)
            text = f"Invalid value: '{part.get('type')}'. Supported values are: {supported}."
            raise _Rejected(400, text, f"input[{i}].content[{j}]")


def _check_reasoning(item: dict[str, Any], follows: dict[str, Any], store: Any) -> None:
    if store is False and not item.get("encrypted_content"):
        raise _Rejected(
            404,
            f"Item with id '{item.get('id')}' not found. Items are not persisted when `store` "
            "is set to false. Try again with `store` set to true, or remove this item from "
            "your input.",
        )
    kind = follows.get("type", "message")
    if kind != "function_call" and (kind != "message" or follows.get("role") != "assistant"):
        raise _Rejected(
            400,
            f"Item '{item.get('id')}' of type 'reasoning' was provided without its required "
            "following item.",
        )
