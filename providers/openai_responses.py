"""The `openai-responses:` provider: the Responses API (`POST /v1/responses`) through the SDK.

Stateless: every request carries the whole conversation with `store: false` (Postgres
keeps the history) and asks for `reasoning.encrypted_content`. Output items become
parts in their order: a message's text a `TextPart`, a `function_call` a `ToolCall`
(matched to its `function_call_output` by `call_id`), and a reasoning item (or any
other item) an `OpaqueItem("openai-responses", <the item's JSON>)` that goes back
verbatim on the next turn. Reasoning summaries stream live as `thinking` deltas and
stay inside their item: no `Thinking` part, so nothing is stored or sent twice.
`Thinking` parts and other providers' opaque items are dropped on the way out.

`to_wire`, `from_wire` and `StreamAssembler` are pure and read the wire's JSON (or
the SDK's models of it). The client, the timeout, the classification of errors and
how a stream is read (the SDK's raw response, each event's JSON as it is) are shared
with `providers.openai`.

Model settings read here: `api_key_env`, `base_url`, `timeout`, `instructions_role`,
`include`, `reasoning_effort`, `reasoning_summary`, `response_format`, `tool_choice`,
`parallel_tool_calls`, and the request options in `PASSTHROUGH`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import openai

from providers.base import Clients, split_model
from providers.errors import ProviderError, Retryable
from providers.openai import (
    DEFAULT_BASE_URL,
    as_sent,
    classified,
    make_client,
    request_timeout,
    stream_chunks,
    stream_error,
)
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
    ToolCall,
    ToolResult,
    Usage,
)

__all__ = [
    "OpenAIResponsesProvider",
    "StreamAssembler",
    "failure",
    "from_wire",
    "message_to_wire",
    "to_wire",
    "usage_from_wire",
]

PROVIDER = "openai-responses"
# Without it a stateless request gets reasoning items it could not send back.
ENCRYPTED_REASONING = "reasoning.encrypted_content"

# Agent model_settings sent to the API unchanged, when set.
PASSTHROUGH = (
    "temperature",
    "top_p",
    "max_output_tokens",
    "service_tier",
    "prompt_cache_key",
    "truncation",
)
# model_settings key -> key of the request's `reasoning` object.
REASONING = {"reasoning_effort": "effort", "reasoning_summary": "summary"}

_INCOMPLETE: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}
# A failed response has an error code and rarely a type: these codes may pass if retried.
_TRANSIENT = frozenset({None, "server_error", "rate_limit_exceeded", "vector_store_timeout"})
_THINKING_DELTAS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})


# --- requests ---------------------------------------------------------------------------------


def to_wire(request: ModelRequest) -> dict[str, Any]:
    """Keyword arguments for `responses.create` (`stream` excluded)."""
    _, model = split_model(request.model)
    settings = request.settings
    wire: dict[str, Any] = {"model": model}
    items: list[dict[str, Any]] = []
    role = settings.get("instructions_role")
    if request.instructions and role in ("developer", "system"):
        items.append(_input_message(role, request.instructions))
    elif request.instructions:
        wire["instructions"] = request.instructions
    for message in request.messages:
        items.extend(message_to_wire(message))
    include = settings.get("include")
    wire.update(
        input=items,
        store=False,
        include=[ENCRYPTED_REASONING] if include is None else list(include),
    )
    if request.tools:
        # Strict by default in this API, unlike in Chat Completions: our schemas may not qualify.
        wire["tools"] = [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": False,
            }
            for t in request.tools
        ]
        if settings.get("tool_choice") is not None:
            wire["tool_choice"] = _tool_choice(settings["tool_choice"])
        if settings.get("parallel_tool_calls") is not None:
            wire["parallel_tool_calls"] = settings["parallel_tool_calls"]
    reasoning = {ours: settings[key] for key, ours in REASONING.items() if settings.get(key)}
    if reasoning:
        wire["reasoning"] = reasoning
    if isinstance(settings.get("response_format"), Mapping):
        wire["text"] = {"format": _text_format(settings["response_format"])}
    wire.update({k: settings[k] for k in PASSTHROUGH if settings.get(k) is not None})
    return wire


def message_to_wire(message: Message) -> list[dict[str, Any]]:
    """One of our messages as input items, in the order of its parts.

    `Thinking` parts (Anthropic's, say) and other providers' opaque items are
    dropped: this API could not read them.
    """
    if message.role == "tool":
        return [
            {"type": "function_call_output", "call_id": r.call_id, "output": _result_text(r)}
            for r in message.parts
            if isinstance(r, ToolResult)
        ]
    if message.role != "assistant":
        text = message.joined_text
        return [_input_message(message.role, text)] if text else []
    items: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart) and part.text:
            output = {"type": "output_text", "text": part.text}
            items.append({"role": "assistant", "content": [output]})
        elif isinstance(part, ToolCall):
            items.append(
                {
                    "type": "function_call",
                    "call_id": part.id,
                    "name": part.name,
                    "arguments": part.arguments,
                }
            )
        elif isinstance(part, OpaqueItem) and part.provider == PROVIDER:
            items.append(dict(part.data))
    return items


def _input_message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "input_text", "text": text}]}


def _result_text(result: ToolResult) -> str:
    # A function_call_output has no error flag, so the text carries it.
    return f"Error: {result.content}" if result.is_error else result.content


def _tool_choice(choice: Any) -> Any:
    """Chat Completions' `{"type": "function", "function": {"name": …}}` flattens here."""
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"type": "function", "name": choice["function"].get("name")}
    return choice


def _text_format(response_format: Mapping[str, Any]) -> dict[str, Any]:
    """Chat Completions' `response_format` as `text.format`, where json_schema is flat."""
    flat = dict(response_format)
    nested = flat.pop("json_schema", None)
    if isinstance(nested, Mapping):
        flat.update(nested)
    return flat


# --- responses --------------------------------------------------------------------------------


def from_wire(response: Mapping[str, Any] | openai.BaseModel) -> ModelResponse:
    """Our response from a `response` object; a failed one raises its classified error."""
    data = _json(response)
    model, status = str(data.get("model") or ""), data.get("status")
    if status == "failed":
        raise failure(data.get("error") or {}, model)
    if status not in (None, "completed", "incomplete"):
        raise Retryable(f"{PROVIDER} model {model!r}: the response is {status}", PROVIDER, model)
    parts: list[Part] = []
    refused = False
    for item in data.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            content = item.get("content") or ()
            refused = refused or any(c.get("type") == "refusal" for c in content)
            text = "".join(c.get("text") or c.get("refusal") or "" for c in content)
            if text:
                parts.append(TextPart(text))
        elif kind == "function_call":
            parts.append(ToolCall(item["call_id"], item["name"], item.get("arguments") or ""))
        else:  # reasoning, or an item we have no type for: kept to be sent back as it was
            parts.append(OpaqueItem(PROVIDER, dict(item)))
    reason: FinishReason = "stop"
    if refused:
        reason = "refusal"
    elif status == "incomplete":
        details = data.get("incomplete_details") or {}
        reason = _INCOMPLETE.get(details.get("reason") or "", "length")
    elif any(isinstance(p, ToolCall) for p in parts):
        reason = "tool_calls"
    usage = usage_from_wire(data.get("usage"))
    return ModelResponse(Message("assistant", tuple(parts)), reason, usage, f"{PROVIDER}:{model}")


def usage_from_wire(usage: Mapping[str, Any] | None) -> Usage:
    """Token counts from the wire's usage; `input_tokens` already counts the cached ones."""
    usage = usage or {}
    inputs = usage.get("input_tokens_details") or {}
    outputs = usage.get("output_tokens_details") or {}
    return Usage(
        input_tokens=usage.get("input_tokens") or 0,
        output_tokens=usage.get("output_tokens") or 0,
        cached_tokens=inputs.get("cached_tokens") or 0,
        cache_write_tokens=inputs.get("cache_write_tokens") or 0,
        reasoning_tokens=outputs.get("reasoning_tokens") or 0,
    )


def failure(error: Mapping[str, Any], model: str) -> ProviderError:
    """Our error for a failed response's `error`, or an `error` event's code and message."""
    code = error.get("code")
    kind = error.get("type") or ("server_error" if code in _TRANSIENT else "invalid_request_error")
    detail = str(error.get("message") or code or "no message")
    return stream_error(detail, code, kind, model, PROVIDER)


def _json(value: Mapping[str, Any] | openai.BaseModel) -> Mapping[str, Any]:
    """An SDK object as the JSON it came from (fields it had, none it did not)."""
    if isinstance(value, openai.BaseModel):
        data: dict[str, Any] = value.to_dict(mode="json")
        return data
    return value


class StreamAssembler:
    """Builds one response from stream events, passing fragments to `on_delta` as they come.

    Items are keyed by `output_index`. A function call's argument fragments go out
    as `tool_arguments` deltas indexed by the call's position among the calls, so
    calls that interleave stay apart. The final items are those of
    `response.completed` (or `.incomplete`), else those of `response.output_item.done`.
    """

    def __init__(self, on_delta: OnDelta | None = None) -> None:
        self._on_delta = on_delta
        self._items: dict[int, dict[str, Any]] = {}
        self._calls: dict[int, int] = {}  # output_index -> position among the calls
        self._final: Mapping[str, Any] | None = None
        self._model = ""

    def add(self, event: Mapping[str, Any] | openai.BaseModel) -> None:
        """Take one event; `response.failed` and `error` raise their classified error."""
        event = _json(event)
        kind = event.get("type")
        response = event.get("response") or {}
        self._model = response.get("model") or self._model
        if kind == "response.output_item.added":
            if event["item"].get("type") == "function_call":
                self._calls.setdefault(event["output_index"], len(self._calls))
        elif kind == "response.output_item.done":
            self._items[event["output_index"]] = dict(event["item"])
        elif kind in _TEXT_DELTAS:
            self._emit(Delta("text", event["delta"]))
        elif kind in _THINKING_DELTAS:
            self._emit(Delta("thinking", event["delta"]))
        elif kind == "response.function_call_arguments.delta":
            position = self._calls.setdefault(event["output_index"], len(self._calls))
            self._emit(Delta("tool_arguments", event["delta"], position))
        elif kind in ("response.completed", "response.incomplete"):
            self._final = response
        elif kind == "response.failed":
            raise failure(response.get("error") or {}, self._model)
        elif kind == "error":  # the event's own `type` says nothing of whose fault it is
            nested = event.get("error")
            flat = {"code": event.get("code"), "message": event.get("message")}
            raise failure(nested if isinstance(nested, Mapping) else flat, self._model)

    def _emit(self, delta: Delta) -> None:
        if self._on_delta is not None and delta.text:
            self._on_delta(delta)

    def response(self) -> ModelResponse:
        """The assembled response; `Retryable` if the stream ended before the response did."""
        if self._final is None:
            raise Retryable(
                f"{PROVIDER} model {self._model!r}: the stream ended before the response did",
                PROVIDER,
                self._model,
            )
        final = dict(self._final)
        if not final.get("output"):
            final["output"] = [self._items[i] for i in sorted(self._items)]
        return from_wire(final)


# --- the provider -----------------------------------------------------------------------------


class OpenAIResponsesProvider:
    """The `openai-responses:` provider; thread-safe, one SDK client per base URL and API key."""

    name = PROVIDER

    def __init__(self) -> None:
        self._clients = Clients(
            PROVIDER, "OPENAI_API_KEY", "OPENAI_BASE_URL", make_client, DEFAULT_BASE_URL
        )

    def client(self, settings: Mapping[str, Any]) -> openai.OpenAI:
        """The SDK client for these model settings, created on first use."""
        request_timeout(settings, PROVIDER)  # a bad timeout fails before any client exists
        return self._clients.get(settings)

    def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """One response; streamed when `on_delta` is given."""
        _, model = split_model(request.model)
        client = self.client(request.settings)
        # Past the SDK's request transform (`as_sent`): with a nine-message history and a
        # tool it cost more CPU than the rest of a streamed call (7.0 against 2.6 ms).
        wire = as_sent(to_wire(request))
        timeout = request_timeout(request.settings, PROVIDER)
        with classified(model, PROVIDER):
            if on_delta is None:
                return from_wire(client.responses.create(**wire, timeout=timeout))
            assembler = StreamAssembler(on_delta)
            raw = client.responses.with_streaming_response.create(
                **wire, stream=True, timeout=timeout
            )
            with raw as response:
                for chunk in stream_chunks(response):
                    assembler.add(chunk)
            return assembler.response()
