"""The `openai:` provider: Chat Completions through the official SDK.

`to_wire` and `from_wire` translate between our message types and the wire, and
`StreamAssembler` builds a response from streamed chunks (the wire's JSON); all three
are pure. `OpenAIProvider` adds the SDK client (one per base URL and key, SDK retries
off) and classifies every SDK error once, as `Retryable` or `Fatal`. Any
OpenAI-compatible server works: `model_settings["base_url"]` or `OPENAI_BASE_URL`.

A stream is read as the SDK's raw response (`with_streaming_response`): its
server-sent events are parsed by `providers.base.sse_events` and each chunk's JSON goes
to the assembler as it is. The SDK's iterator would build a typed object of every chunk
first: three to four times the CPU per streamed token.

Model settings read here: `api_key_env`, `base_url`, `timeout`, `instructions_role`,
and the request options in `PASSTHROUGH`.
"""

from __future__ import annotations

import importlib
import json
import math
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion

from providers.base import Clients, http_options, split_model, sse_events
from providers.errors import ContextLengthExceeded, Fatal, ProviderError, Retryable, retry_after
from providers.types import (
    Delta,
    FinishReason,
    Message,
    ModelRequest,
    ModelResponse,
    OnDelta,
    Part,
    TextPart,
    ToolCall,
    ToolResult,
    Usage,
)

__all__ = [
    "HTTP",
    "OpenAIProvider",
    "StreamAssembler",
    "chunk_json",
    "classified",
    "classify",
    "from_wire",
    "make_client",
    "message_to_wire",
    "request_timeout",
    "retry_after",
    "stream_chunks",
    "stream_error",
    "to_wire",
    "usage_from_wire",
]

PROVIDER = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0

# Agent model_settings sent to the API unchanged, when set.
PASSTHROUGH = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "reasoning_effort",
    "response_format",
    "seed",
    "stop",
)
# These are only valid alongside tools (the API rejects them otherwise).
TOOL_OPTIONS = ("tool_choice", "parallel_tool_calls")

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "length",
    "content_filter": "content_filter",
}
_RETRYABLE_STATUS = frozenset({408, 409, 429})


# --- requests ---------------------------------------------------------------------------------


def to_wire(request: ModelRequest) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create` (streaming options excluded)."""
    _, model = split_model(request.model)
    settings = request.settings
    messages: list[dict[str, Any]] = []
    if request.instructions:
        role = "developer" if settings.get("instructions_role") == "developer" else "system"
        messages.append({"role": role, "content": request.instructions})
    for message in request.messages:
        messages.extend(message_to_wire(message))
    wire: dict[str, Any] = {"model": model, "messages": messages}
    if request.tools:
        wire["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    options = PASSTHROUGH + TOOL_OPTIONS if request.tools else PASSTHROUGH
    wire.update({k: settings[k] for k in options if settings.get(k) is not None})
    return wire


def as_sent(wire: dict[str, Any], **required: Any) -> dict[str, Any]:
    """`create`'s keyword arguments for a request already in wire form: all but the
    model go in `extra_body`, which the SDK merges into the JSON body as it is.

    The SDK would otherwise walk every message and tool against its TypedDicts
    (`maybe_transform`) to rename and reformat fields that `to_wire` already wrote
    as the API expects: a third of a call's CPU on a worker, 8% of all of it with
    1,000 runs in flight. `required` are the arguments the method cannot go without
    (Chat Completions' `messages`, given empty): the body's own values replace them.
    """
    rest = {k: v for k, v in wire.items() if k != "model"}
    return {"model": wire["model"], **required, "extra_body": rest}


def message_to_wire(message: Message) -> list[dict[str, Any]]:
    """One of our messages as Chat Completions messages (none, one, or one per tool result).

    Thinking and opaque parts cannot be sent to Chat Completions and are dropped.
    """
    text = message.joined_text
    if message.role == "tool":
        return [
            {"role": "tool", "tool_call_id": r.call_id, "content": _result_text(r)}
            for r in message.parts
            if isinstance(r, ToolResult)
        ]
    if message.role != "assistant":
        return [{"role": message.role, "content": text}] if text else []
    calls = message.tool_calls
    if not text and not calls:
        return []
    wire: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        wire["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in calls
        ]
    return [wire]


def _result_text(result: ToolResult) -> str:
    # Chat Completions has no error flag on a tool message, so the text carries it.
    return f"Error: {result.content}" if result.is_error else result.content


# --- responses --------------------------------------------------------------------------------


def from_wire(completion: ChatCompletion) -> ModelResponse:
    """Our response from a non-streamed chat completion (its first choice)."""
    if not completion.choices:
        raise Retryable(
            "openai: the server returned a completion without choices", PROVIDER, completion.model
        )
    choice = completion.choices[0]
    message = choice.message
    calls: list[ToolCall] = []
    for call in message.tool_calls or ():
        if call.type == "function":
            calls.append(ToolCall(call.id, call.function.name, call.function.arguments))
        else:  # a custom tool call: pass its raw input on, the tool will judge it
            calls.append(ToolCall(call.id, call.custom.name, call.custom.input))
    if message.function_call is not None and not calls:
        fc = message.function_call
        calls.append(ToolCall(f"call_{completion.id}", fc.name, fc.arguments))
    return _response(
        text=message.content or "",
        refusal=message.refusal or "",
        calls=calls,
        finish=choice.finish_reason,
        usage=usage_from_wire(completion.usage),
        model=completion.model,
    )


def usage_from_wire(usage: CompletionUsage | Mapping[str, Any] | None) -> Usage:
    """Token counts from the wire's usage object, the SDK's (a completion) or its JSON (a
    stream's chunk); absent counters are zero."""
    if not usage:
        return Usage()
    found = usage if isinstance(usage, Mapping) else usage.model_dump()
    prompt = found.get("prompt_tokens_details") or {}
    completion = found.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=found.get("prompt_tokens") or 0,
        output_tokens=found.get("completion_tokens") or 0,
        cached_tokens=prompt.get("cached_tokens") or 0,
        cache_write_tokens=prompt.get("cache_write_tokens") or 0,
        reasoning_tokens=completion.get("reasoning_tokens") or 0,
    )


def _response(
    *, text: str, refusal: str, calls: list[ToolCall], finish: str | None, usage: Usage, model: str
) -> ModelResponse:
    parts: list[Part] = []
    reason: FinishReason = _FINISH.get(finish or "", "stop")
    if refusal:
        parts.append(TextPart(refusal))
        reason = "refusal"
    elif text:
        parts.append(TextPart(text))
    parts.extend(calls)
    if calls and reason == "stop":
        reason = "tool_calls"  # some compatible servers say "stop" after tool calls
    return ModelResponse(Message("assistant", tuple(parts)), reason, usage, f"{PROVIDER}:{model}")


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamAssembler:
    """Builds one response from streamed chunks, passing fragments to `on_delta` as they come.

    A chunk is the wire's JSON object. Tool calls are keyed by their `index`: the
    first fragment brings the id and name, later ones bring pieces of the
    arguments, and calls may interleave.
    """

    def __init__(self, on_delta: OnDelta | None = None) -> None:
        self._on_delta = on_delta
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self._finish: str | None = None
        self._usage = Usage()
        self._model = ""
        self._id = ""

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Take one chunk: the final usage chunk has no choices."""
        self._id = self._id or chunk.get("id") or ""
        self._model = chunk.get("model") or self._model
        if chunk.get("usage") is not None:
            self._usage = usage_from_wire(chunk["usage"])
        for choice in chunk.get("choices") or ():  # some servers send null on the usage chunk
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self._text.append(content)
                self._emit(Delta("text", content))
            if refusal := delta.get("refusal"):
                self._refusal.append(refusal)
                self._emit(Delta("text", refusal))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                self._fragment(
                    call.get("index", 0),
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments"),
                )
            if (fc := delta.get("function_call")) is not None:  # deprecated single function call
                self._fragment(0, None, fc.get("name"), fc.get("arguments"))

    def _fragment(
        self, index: int, id: str | None, name: str | None, arguments: str | None
    ) -> None:
        partial = self._calls.setdefault(index, _PartialCall())
        partial.id = partial.id or id or ""
        partial.name = partial.name or name or ""
        if arguments:
            partial.arguments.append(arguments)
            self._emit(Delta("tool_arguments", arguments, index))

    def _emit(self, delta: Delta) -> None:
        if self._on_delta is not None:
            self._on_delta(delta)

    def response(self) -> ModelResponse:
        """The assembled response; `Retryable` if the stream ended before a finish reason."""
        if self._finish is None:
            raise Retryable(
                "openai: the stream ended before the model finished", PROVIDER, self._model
            )
        calls = [
            ToolCall(p.id or f"call_{self._id}_{i}", p.name, "".join(p.arguments))
            for i, p in sorted(self._calls.items())
        ]
        return _response(
            text="".join(self._text),
            refusal="".join(self._refusal),
            calls=calls,
            finish=self._finish,
            usage=self._usage,
            model=self._model,
        )


# --- errors -----------------------------------------------------------------------------------

# The HTTP library under the SDK: httpx for openai 2.x (what the litellm extra installs),
# httpx2 for 3.x. A connection cut mid-stream surfaces as its TransportError: a stream's
# body is read here, not through the SDK's iterator, which would wrap it.
_MAJOR = int(openai.__version__.partition(".")[0])
HTTP = importlib.import_module("httpx2" if _MAJOR >= 3 else "httpx")
_TRANSPORT_ERROR: type[Exception] = HTTP.TransportError


def classify(error: openai.OpenAIError, model: str, provider: str = PROVIDER) -> ProviderError:
    """Our error for an SDK error: retry later (with the server's delay), or give up."""
    where = f"{provider} model {model!r}"
    if isinstance(error, openai.APITimeoutError):
        return Retryable(f"{where}: the request timed out", provider, model)
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return Retryable(f"{where}: connection failed: {cause}", provider, model)
    if isinstance(error, openai.APIResponseValidationError):
        return Fatal(f"{where}: unexpected response: {error}", provider, model)
    if isinstance(error, openai.APIStatusError):
        status, detail = error.status_code, _server_message(error)
        if status in _RETRYABLE_STATUS or status >= 500:
            return Retryable(
                f"{where}: HTTP {status}: {detail}",
                provider,
                model,
                retry_after=retry_after(error.response.headers),
            )
        text = f"{where} rejected the request (HTTP {status}): {detail}"
        if _context_length(error.code, detail):
            return ContextLengthExceeded(text, provider, model)
        return Fatal(text, provider, model)
    if isinstance(error, openai.APIError):  # an error event inside a stream: no status
        return stream_error(_server_message(error), error.code, error.type, model, provider)
    return Fatal(f"{where}: {error}", provider, model)


def stream_error(
    detail: str, code: str | None, kind: str | None, model: str, provider: str = PROVIDER
) -> ProviderError:
    """Our error for one reported inside a stream, which has no HTTP status: by code and type."""
    text = f"{provider} model {model!r}: error in stream: {detail}"
    if _context_length(code, detail):
        return ContextLengthExceeded(text, provider, model)
    if kind == "invalid_request_error":
        return Fatal(text, provider, model)
    return Retryable(text, provider, model)


@contextmanager
def classified(model: str, provider: str = PROVIDER) -> Iterator[None]:
    """Inside the block, SDK errors and a connection cut mid-stream leave as ours."""
    try:
        yield
    except openai.OpenAIError as error:
        raise classify(error, model, provider) from error
    except _TRANSPORT_ERROR as error:
        raise Retryable(
            f"{provider} model {model!r}: connection failed: {error}", provider, model
        ) from error


def _server_message(error: openai.APIError, limit: int = 500) -> str:
    body = error.body
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        message = str(body["message"])
    elif isinstance(body, str) and body:
        message = body  # not JSON: say, an HTML page from a proxy
    else:
        message = error.message
    return message if len(message) <= limit else message[:limit] + "…"


def _context_length(code: str | None, detail: str) -> bool:
    return code == "context_length_exceeded" or "maximum context length" in detail.lower()


# --- the provider -----------------------------------------------------------------------------


class OpenAIProvider:
    """The `openai:` provider; thread-safe, one SDK client per base URL and API key."""

    name = PROVIDER

    def __init__(self) -> None:
        self._clients = Clients(
            PROVIDER, "OPENAI_API_KEY", "OPENAI_BASE_URL", make_client, DEFAULT_BASE_URL
        )

    def client(self, settings: Mapping[str, Any]) -> openai.OpenAI:
        """The SDK client for these model settings, created on first use."""
        request_timeout(settings)  # a bad timeout is a clear error before any client exists
        return self._clients.get(settings)

    def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """One chat completion; streamed (with usage) when `on_delta` is given."""
        _, model = split_model(request.model)
        client = self.client(request.settings)
        wire = to_wire(request)
        timeout = request_timeout(request.settings)
        create = client.chat.completions.create
        with classified(model):
            if on_delta is None:
                return from_wire(create(**as_sent(wire, messages=[]), timeout=timeout))
            assembler = StreamAssembler(on_delta)
            raw = client.chat.completions.with_streaming_response.create(
                **as_sent(wire, messages=[]),
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout,
            )
            with raw as response:
                for chunk in stream_chunks(response):
                    assembler.add(chunk)
            return assembler.response()


def stream_chunks(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON of each chunk of a raw streamed response (the SDK's `APIResponse`), up
    to `[DONE]`.

    The body is read to its end past `[DONE]`: on HTTP/1.1 a connection whose response
    was not read to its end is closed rather than reused, and every streamed call would
    open a new one (a TCP and a TLS handshake). The server ends the body right after;
    if the connection fails instead, the answer is whole all the same.
    """
    events = sse_events(response.iter_lines())
    for _, data in events:
        if data.startswith("[DONE]"):
            with suppress(_TRANSPORT_ERROR):
                deque(events, maxlen=0)  # read the rest of the body: nothing but its end
            return
        yield chunk_json(data, response.http_request)


def chunk_json(data: str, request: Any) -> dict[str, Any]:
    """One streamed chunk's JSON; an error object in the stream raises as the SDK would."""
    chunk = json.loads(data)
    if isinstance(chunk, dict) and chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, Mapping) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        raise openai.APIError(message, request, body=error)
    return chunk  # type: ignore[no-any-return]


def make_client(base_url: str | None, api_key: str) -> openai.OpenAI:
    """An SDK client with its retries off, keeping its connections open in several pools
    (`http_options`); the timeout goes on every request too."""
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,  # the Celery task retries, visibly
        timeout=openai.Timeout(DEFAULT_TIMEOUT, connect=CONNECT_TIMEOUT),
        http_client=openai.DefaultHttpxClient(**http_options(HTTP)),
    )


def request_timeout(settings: Mapping[str, Any], provider: str = PROVIDER) -> openai.Timeout:
    """Per request, so each agent's `timeout` holds even on a shared client."""
    value = settings.get("timeout")
    try:
        total = DEFAULT_TIMEOUT if value is None else float(value)
    except (TypeError, ValueError):
        total = -1.0
    if not 0 < total < math.inf:
        raise Fatal(f"{provider}: model_settings['timeout'] must be positive seconds", provider)
    return openai.Timeout(total, connect=min(CONNECT_TIMEOUT, total))
