"""The `anthropic:` provider: the Messages API through the official SDK.

`to_wire` and `from_wire` translate between our message types and the wire JSON,
and `StreamAssembler` builds a response from streamed events; all three are pure.
`AnthropicProvider` adds the SDK client (one per base URL and key, SDK retries
off) and classifies every failure once, as `Retryable` or `Fatal`. A stream is read as
the SDK's raw response (`with_streaming_response`), its events parsed by
`providers.base.sse_events` and given to the assembler as JSON: the SDK would build a
typed object of each event first, which the assembler would turn back into JSON.

Thinking round-trips verbatim, to Anthropic only: a `thinking` block becomes
`Thinking(text, signature, provider="anthropic")`, a `redacted_thinking` block
becomes `Thinking(<its opaque data>, redacted=True, provider="anthropic")`, and
content blocks we have no type for (server tools, say) become
`OpaqueItem("anthropic", block)`. All go back unchanged on the next turn; another
provider's thinking and opaque items are dropped, as is unsigned thinking.

Model settings read here: `api_key_env`, `base_url`, `timeout`, `max_tokens`,
`thinking_budget` (or a raw `thinking` object), `cache`, `tool_choice`, and
the options in `PASSTHROUGH`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import anthropic
import httpx2

from providers.base import Clients, http_options, split_model, sse_events
from providers.errors import ContextLengthExceeded, Fatal, ProviderError, Retryable, retry_after
from providers.types import (
    Delta,
    FinishReason,
    Message,
    ModelRequest,
    ModelResponse,
    OnDelta,
    OpaqueItem,
    Part,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    Usage,
)

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0

# Agent model_settings sent to the API unchanged, when set.
PASSTHROUGH = ("temperature", "top_p", "top_k", "stop_sequences", "metadata")
# This SDK's `messages.create` has no temperature, top_p or top_k argument: every body
# key outside this set travels as `extra_body`, merged into the same JSON.
_CREATE_ARGS = frozenset(
    ("model", "max_tokens", "messages", "system", "tools", "tool_choice", "thinking",
     "stop_sequences", "metadata")
)  # fmt: skip
_EPHEMERAL = {"type": "ephemeral"}

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "refusal": "refusal", "pause_turn": "pause",
}  # fmt: skip
_RETRYABLE_STATUS = frozenset({408, 409, 429})
# An error event inside a 200 stream has a type but no status: read it as this status.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}  # fmt: skip
# A 429 for these waits for next month or a new contract, not for a few seconds.
_SPEND_CAPS = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached"})
_TOO_LONG = re.compile(r"prompt is too long|context (window|limit|length)", re.IGNORECASE)


# --- requests ---------------------------------------------------------------------------------


def to_wire(request: ModelRequest) -> dict[str, Any]:
    """The JSON body of `POST /v1/messages` for this request (without `stream`)."""
    _, model = split_model(request.model)
    settings = request.settings
    cache = bool(settings.get("cache"))
    budget = settings.get("thinking_budget")
    # The API requires max_tokens, and it must exceed the thinking budget.
    max_tokens = settings.get("max_tokens") or DEFAULT_MAX_TOKENS + int(budget or 0)
    body: dict[str, Any] = {"model": model, "max_tokens": int(max_tokens)}
    texts = [request.instructions] if request.instructions else []
    texts += [m.joined_text for m in request.messages if m.role == "system" and m.joined_text]
    if texts:
        system = "\n\n".join(texts)
        body["system"] = (
            [{"type": "text", "text": system, "cache_control": dict(_EPHEMERAL)}]
            if cache
            else system
        )
    body["messages"] = messages_to_wire(request.messages)
    if request.tools:
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if cache:
            tools[-1]["cache_control"] = dict(_EPHEMERAL)
        body["tools"] = tools
        if settings.get("tool_choice") is not None:
            body["tool_choice"] = _tool_choice(settings["tool_choice"])
    if budget:
        body["thinking"] = {"type": "enabled", "budget_tokens": int(budget)}
    elif isinstance(settings.get("thinking"), Mapping):
        body["thinking"] = dict(settings["thinking"])
    for key in PASSTHROUGH:
        if settings.get(key) is not None:
            body[key] = settings[key]
    return body


def _tool_choice(choice: Any) -> dict[str, Any]:
    """`"auto"`, `"any"`, `"none"`, a tool's name, or the API's own object."""
    if isinstance(choice, Mapping):
        return dict(choice)
    if choice in ("auto", "any", "none"):
        return {"type": choice}
    return {"type": "tool", "name": str(choice)}


def messages_to_wire(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The `messages` list: user and assistant turns, alternating, tool results as user turns."""
    wire: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue  # joined into the top-level `system`
        role = "assistant" if message.role == "assistant" else "user"
        blocks = [b for b in map(_block, message.parts) if b is not None]
        if not blocks:
            continue
        if wire and wire[-1]["role"] == role:  # the API wants strictly alternating roles
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    for turn in wire:
        if turn["role"] == "user":  # tool results must open their user turn
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    return wire


def _block(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": _input(part)}
    if isinstance(part, ToolResult):
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": part.call_id,
            "content": part.content,
        }
        if part.is_error:
            block["is_error"] = True
        return block
    if isinstance(part, Thinking):
        if part.provider != PROVIDER:
            return None
        if part.redacted:
            return {"type": "redacted_thinking", "data": part.text}
        if part.signature is None:
            return None  # the API rejects thinking it cannot verify
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    if part.provider == PROVIDER:  # OpaqueItem
        return dict(part.data)
    return None


def _input(call: ToolCall) -> dict[str, Any]:
    """The call's arguments as a JSON object; `{}` when the model sent something else."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --- responses --------------------------------------------------------------------------------


def from_wire(message: Mapping[str, Any] | anthropic.BaseModel) -> ModelResponse:
    """Our response from a Message object (its JSON, or the SDK's model of it)."""
    data = _json(message)
    return _response(data, list(data.get("content") or ()), {})


def _json(value: Mapping[str, Any] | anthropic.BaseModel) -> Mapping[str, Any]:
    """An SDK object as the JSON it came from."""
    if isinstance(value, anthropic.BaseModel):
        data: dict[str, Any] = value.to_dict(mode="json")
        return data
    return value


def usage_from_wire(usage: Mapping[str, Any] | None) -> Usage:
    """Token counts from the wire's usage object (absent counters are zero).

    Anthropic's `input_tokens` leaves out cache reads and writes; ours counts every
    input token, as OpenAI's does, so totals and costs mean the same everywhere.
    """
    usage = usage or {}
    details = usage.get("output_tokens_details") or {}
    cached = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return Usage(
        input_tokens=(usage.get("input_tokens") or 0) + cached + written,
        output_tokens=usage.get("output_tokens") or 0,
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=details.get("thinking_tokens") or 0,
    )


def _response(
    message: Mapping[str, Any], blocks: list[dict[str, Any]], raw_arguments: dict[int, str]
) -> ModelResponse:
    parts: list[Part] = []
    for index, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            if block.get("text"):
                parts.append(TextPart(block["text"]))
        elif kind == "tool_use":
            arguments = raw_arguments.get(index)
            if arguments is None:
                arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            parts.append(ToolCall(block["id"], block["name"], arguments))
        elif kind == "thinking":
            parts.append(
                Thinking(block.get("thinking", ""), block.get("signature"), False, PROVIDER)
            )
        elif kind == "redacted_thinking":
            parts.append(Thinking(block.get("data", ""), None, True, PROVIDER))
        else:
            parts.append(OpaqueItem(PROVIDER, dict(block)))
    reason = _STOP.get(message.get("stop_reason") or "", "stop")
    if reason == "stop" and any(isinstance(p, ToolCall) for p in parts):
        reason = "tool_calls"
    return ModelResponse(
        Message("assistant", tuple(parts)),
        reason,
        usage_from_wire(message.get("usage")),
        f"{PROVIDER}:{message.get('model', '')}",
    )


class StreamAssembler:
    """Builds a response from the stream's events (as JSON), reporting fragments as they come.

    Tool input arrives as `input_json_delta` fragments per block index; they are
    joined and parsed at `content_block_stop`, and the joined text is kept as the
    call's `arguments` even when it does not parse.
    """

    def __init__(self, on_delta: OnDelta | None = None) -> None:
        self._on_delta = on_delta
        self._message: dict[str, Any] = {}
        self._usage: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self._raw: dict[int, str] = {}
        self._stopped = False

    def add(self, event: Mapping[str, Any] | anthropic.BaseModel) -> None:
        """Take one event: message_start, content_block_*, message_delta, message_stop."""
        event = _json(event)
        kind = event.get("type")
        if kind == "message_start":
            self._message = dict(event["message"])
            self._usage = dict(self._message.get("usage") or {})
        elif kind == "content_block_start":
            self._blocks[event["index"]] = dict(event["content_block"])
        elif kind == "content_block_delta":
            self._delta(event["index"], event["delta"])
        elif kind == "content_block_stop":
            self._stop_block(event["index"])
        elif kind == "message_delta":
            self._message.update((k, v) for k, v in event.get("delta", {}).items())
            self._usage.update(
                (k, v) for k, v in (event.get("usage") or {}).items() if v is not None
            )
        elif kind == "message_stop":
            self._stopped = True

    def _delta(self, index: int, delta: Mapping[str, Any]) -> None:
        block = self._blocks.setdefault(index, {})
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
            self._emit(Delta("text", delta["text"], index))
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(delta["partial_json"])
            if block.get("type") == "tool_use":
                self._emit(Delta("tool_arguments", delta["partial_json"], index))
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
            self._emit(Delta("thinking", delta["thinking"], index))
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta["signature"]

    def _stop_block(self, index: int) -> None:
        if index not in self._json:
            return
        raw = "".join(self._json.pop(index))
        block = self._blocks.get(index, {})
        if not raw:
            return  # no input: the start block's `{}` stands
        self._raw[index] = raw
        try:
            block["input"] = json.loads(raw)
        except ValueError:
            block["input"] = {}  # the raw text goes on as the call's arguments

    def _emit(self, delta: Delta) -> None:
        if self._on_delta is not None and delta.text:
            self._on_delta(delta)

    def response(self) -> ModelResponse:
        """The assembled response; `Retryable` if the stream ended before `message_stop`."""
        if not self._stopped:
            model = str(self._message.get("model", ""))
            raise Retryable(
                f"anthropic model {model!r}: the stream ended before message_stop", PROVIDER, model
            )
        blocks = [self._blocks[i] for i in sorted(self._blocks)]
        raw = {
            position: self._raw[i]
            for position, i in enumerate(sorted(self._blocks))
            if i in self._raw
        }
        return _response({**self._message, "usage": self._usage}, blocks, raw)


# --- errors -----------------------------------------------------------------------------------


def classify(error: Exception, model: str) -> ProviderError:
    """Our error for a failed call: retry later (with the server's delay), or give up."""
    where = f"anthropic model {model!r}"
    if isinstance(error, anthropic.APITimeoutError | httpx2.TimeoutException):
        return Retryable(f"{where}: the request timed out", PROVIDER, model)
    if isinstance(error, anthropic.APIConnectionError | httpx2.TransportError):
        cause = error.__cause__ or error
        return Retryable(f"{where}: connection failed: {cause}", PROVIDER, model)
    if isinstance(error, anthropic.APIStatusError):
        return classify_status(error.status_code, error.body, error.response.headers, model)
    return Fatal(f"{where}: {type(error).__name__}: {error}", PROVIDER, model)


def classify_status(
    status: int, body: object, headers: Mapping[str, str], model: str
) -> ProviderError:
    """Classify an HTTP error, or (status < 400) an `error` event inside a stream."""
    error = body.get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    kind = str(error.get("type") or "")
    detail = str(error.get("message") or body or "no message")
    details = error.get("details")
    code = details.get("error_code") if isinstance(details, Mapping) else None
    request_id = body.get("request_id") if isinstance(body, Mapping) else None
    request_id = request_id or headers.get("request-id")
    if status < 400:
        status, what = _STATUS_OF_TYPE.get(kind, 500), f"error event in stream: {kind}"
    else:
        what = f"HTTP {status}" + (f" {kind}" if kind else "")
    text = f"anthropic model {model!r}: {detail} ({what}" + (
        f", request {request_id})" if request_id else ")"
    )
    should = headers.get("x-should-retry")  # the server's own verdict wins
    if should == "true" or (
        should != "false"
        and (status in _RETRYABLE_STATUS or status >= 500)
        and code not in _SPEND_CAPS
    ):
        return Retryable(text, PROVIDER, model, retry_after=retry_after(headers))
    if status == 400 and _TOO_LONG.search(detail):
        return ContextLengthExceeded(text, PROVIDER, model)
    return Fatal(text, PROVIDER, model)


# --- the provider -----------------------------------------------------------------------------


def _make_client(base_url: str | None, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,  # the Celery task retries, visibly
        timeout=DEFAULT_TIMEOUT,
        http_client=anthropic.DefaultHttpxClient(**http_options(httpx2)),
    )


class AnthropicProvider:
    """The `anthropic:` provider; thread-safe, one SDK client per base URL and API key."""

    name = PROVIDER

    def __init__(self) -> None:
        self._clients = Clients(PROVIDER, "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", _make_client)

    def client(self, settings: Mapping[str, Any]) -> anthropic.Anthropic:
        """The SDK client for these model settings, created on first use."""
        return self._clients.get(settings)

    def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """One Messages API call; streamed when `on_delta` is given."""
        _, model = split_model(request.model)
        client = self.client(request.settings)
        wire = to_wire(request)
        args = {k: v for k, v in wire.items() if k in _CREATE_ARGS}
        extra = {k: v for k, v in wire.items() if k not in _CREATE_ARGS} or None
        timeout = _timeout(request.settings)
        try:
            if on_delta is None:
                message = client.messages.create(**args, extra_body=extra, timeout=timeout)
                return from_wire(message)
            assembler = StreamAssembler(on_delta)
            raw = client.messages.with_streaming_response.create(
                **args, stream=True, extra_body=extra, timeout=timeout
            )
            with raw as response:
                for name, data in sse_events(response.iter_lines()):
                    if name == "error":  # the SDK's Stream raises this as a status error
                        body = _error_body(data)
                        raise classify_status(response.status_code, body, response.headers, model)
                    if name and name != "ping":
                        assembler.add(json.loads(data))
            return assembler.response()
        except (anthropic.AnthropicError, httpx2.TransportError) as error:
            raise classify(error, model) from error


def _error_body(data: str) -> object:
    """An `error` event's data: its JSON, or the text if it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return data


def _timeout(settings: Mapping[str, Any]) -> httpx2.Timeout:
    total = float(settings.get("timeout") or DEFAULT_TIMEOUT)
    return httpx2.Timeout(total, connect=min(CONNECT_TIMEOUT, total))


__all__ = [
    "AnthropicProvider",
    "StreamAssembler",
    "classify",
    "classify_status",
    "from_wire",
    "messages_to_wire",
    "retry_after",
    "to_wire",
    "usage_from_wire",
]
