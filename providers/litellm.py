"""The `litellm:` provider: any model LiteLLM reaches (`litellm:gemini/gemini-2.5-pro`).

An optional extra, imported on first use with everything that phones home turned off.
`to_wire`, `from_wire` and `StreamAssembler` are pure and read plain JSON (a LiteLLM
object's `model_dump()`); `LiteLLMProvider` calls `litellm.completion` with retries off
and classifies every failure once.

What the next turn needs rides in the assistant message: signed and redacted thinking
(Anthropic's) as `Thinking(provider="litellm")` parts, sent back as `thinking_blocks`;
thought signatures (Gemini's, on function calls and on the message) in one
`OpaqueItem("litellm", {"model", "tool_signatures", "thought_signatures"})`, sent back as
`provider_specific_fields`. Tool call ids are kept without the signature LiteLLM folds
into them (`call_…__thought__<signature>`). Thinking and signatures go back only to the
family (`anthropic/`, `gemini/`…) that made them; other adapters drop them.

Model settings read here: `api_key_env`, `base_url`, `timeout`, `thinking_budget` (or a
raw `thinking` object), and the options in `PASSTHROUGH` and `TOOL_OPTIONS`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import openai

from providers.base import split_model
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

__all__ = ["LiteLLMProvider", "StreamAssembler", "classify", "from_wire", "load",
           "message_to_wire", "to_wire", "usage_from_wire"]  # fmt: skip

PROVIDER = "litellm"
INSTALL = "pip install 'stepwise[litellm]'"
DEFAULT_TIMEOUT = 120.0

# Set (unless already set) before litellm is first imported.
_ENVIRONMENT = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else import fetches the cost map from GitHub
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",  # else the first Anthropic call fetches one
    "LITELLM_MODE": "PRODUCTION",  # else import loads a .env file from the working directory
}
# Agent model_settings passed to `litellm.completion` unchanged, when set.
PASSTHROUGH = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "reasoning_effort",
               "response_format", "seed", "stop", "drop_params")  # fmt: skip
TOOL_OPTIONS = ("tool_choice", "parallel_tool_calls")  # only valid alongside tools

_TEXTS: dict[str, Literal["text", "thinking"]] = {
    "content": "text", "refusal": "text", "reasoning_content": "thinking",
}  # fmt: skip
_SEPARATOR = "__thought__"  # how LiteLLM folds a thought signature into a tool call id
_FINISH: dict[str, FinishReason] = {
    "stop": "stop", "tool_calls": "tool_calls", "function_call": "tool_calls",
    "length": "length", "content_filter": "content_filter", "refusal": "refusal",
}  # fmt: skip
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_TOO_LONG = re.compile(
    r"context.length|context window|maximum context|prompt is too long|input token count", re.I
)
_PREFIXES = re.compile(r"^(litellm\.\w+: |\w+Error: )+")  # LiteLLM's, before the server's text
# LiteLLM reports a missing key as a connection error or a 500 for some providers.
_NO_KEY = re.compile(r"\bmissing (credentials|[\w ]{0,20}api key)", re.I)


def load() -> Any:
    """The litellm module, imported with its network fetches off; `Fatal` when not installed."""
    for key, value in _ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        litellm: Any = importlib.import_module("litellm")
    except ImportError as error:
        message = f"litellm: the LiteLLM bridge is not installed ({error}): {INSTALL}"
        raise Fatal(message, PROVIDER) from error
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner on every error
    return litellm


# --- requests ---------------------------------------------------------------------------------


def to_wire(request: ModelRequest) -> dict[str, Any]:
    """Keyword arguments for `litellm.completion` (streaming, key, base URL and timeout aside)."""
    _, model = split_model(request.model)
    settings = request.settings
    messages = [{"role": "system", "content": request.instructions}] if request.instructions else []
    for message in request.messages:
        messages.extend(message_to_wire(message, model))
    wire: dict[str, Any] = {"model": model, "messages": messages}
    if request.tools:
        wire["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}}
            for t in request.tools
        ]  # fmt: skip
    options = PASSTHROUGH + TOOL_OPTIONS if request.tools else PASSTHROUGH
    wire.update({k: settings[k] for k in options if settings.get(k) is not None})
    if settings.get("thinking_budget"):
        wire["thinking"] = {"type": "enabled", "budget_tokens": int(settings["thinking_budget"])}
    elif isinstance(settings.get("thinking"), Mapping):
        wire["thinking"] = dict(settings["thinking"])
    return wire


def message_to_wire(message: Message, model: str) -> list[dict[str, Any]]:
    """One of our messages as OpenAI-format messages for LiteLLM's `model`: none, one, or one
    per tool result, in order. Thinking and signatures go back only to their own family."""
    text = message.joined_text
    if message.role == "tool":  # the error flag has no field here, so the text carries it
        return [
            {"role": "tool", "tool_call_id": r.call_id,
             "content": f"Error: {r.content}" if r.is_error else r.content}
            for r in message.parts
            if isinstance(r, ToolResult)
        ]  # fmt: skip
    if message.role != "assistant":
        return [{"role": message.role, "content": text}] if text else []
    if not text and not message.tool_calls:
        return []
    wire: dict[str, Any] = {"role": "assistant", "content": text or None}
    carried = next(
        (p.data for p in message.parts if isinstance(p, OpaqueItem) and p.provider == PROVIDER),
        {},
    )
    if _family(carried.get("model", model)) != _family(model):
        carried = {}  # another family's signatures: it could not verify them
    elif blocks := [b for b in map(_thinking_block, message.parts) if b is not None]:
        wire["thinking_blocks"] = blocks
    if carried.get("thought_signatures"):
        wire["provider_specific_fields"] = {"thought_signatures": carried["thought_signatures"]}
    signed = carried.get("tool_signatures") or {}
    calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c)}}
        for c in message.tool_calls
    ]
    for call in calls:
        if call["id"] in signed:
            call["provider_specific_fields"] = {"thought_signature": signed[call["id"]]}
    if calls:
        wire["tool_calls"] = calls
    return [wire]


def _family(model: str) -> str:
    """`"gemini/gemini-2.5-pro"` -> `"gemini"`: the provider whose signatures a model reads."""
    family, _, rest = model.partition("/")
    return family if rest else ""


def _thinking_block(part: Part) -> dict[str, Any] | None:
    if not isinstance(part, Thinking) or part.provider != PROVIDER:
        return None
    if part.redacted:
        return {"type": "redacted_thinking", "data": part.text}
    if part.signature is None:
        return None  # unsigned reasoning cannot be verified, so it is not sent back
    return {"type": "thinking", "thinking": part.text, "signature": part.signature}


def _arguments(call: ToolCall) -> str:
    """The raw arguments when they are a JSON object, else `{}`: LiteLLM parses them for
    Anthropic and Gemini and would fail the whole request on malformed JSON."""
    arguments = call.arguments or "{}"
    try:
        return arguments if isinstance(json.loads(arguments), dict) else "{}"
    except ValueError:
        return "{}"


# --- responses --------------------------------------------------------------------------------


def from_wire(completion: Mapping[str, Any], model: str) -> ModelResponse:
    """Our response from a non-streamed completion's JSON (its first choice)."""
    choices = completion.get("choices") or []
    if not choices:
        raise Retryable(f"litellm model {model!r}: a completion without choices", PROVIDER, model)
    message = choices[0].get("message") or {}
    usage = usage_from_wire(completion.get("usage"))
    return _response(message, choices[0].get("finish_reason"), usage, model)


def usage_from_wire(usage: Mapping[str, Any] | None) -> Usage:
    """Token counts from LiteLLM's usage JSON. Its `prompt_tokens` already counts cache reads
    and writes (Anthropic's too), so it is our `input_tokens` as it is."""
    usage = usage or {}
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    written = prompt.get("cache_write_tokens") or usage.get("cache_creation_input_tokens")
    return Usage(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_tokens=prompt.get("cached_tokens") or usage.get("cache_read_input_tokens") or 0,
        cache_write_tokens=written or 0,
        reasoning_tokens=completion.get("reasoning_tokens") or 0,
    )


def _response(
    message: Mapping[str, Any], finish: str | None, usage: Usage, model: str
) -> ModelResponse:
    """Our response from an assistant message's JSON, in LiteLLM's shape."""
    fields = message.get("provider_specific_fields") or {}
    parts = _thinking_parts(message.get("thinking_blocks") or (), message)
    thinking = bool(parts)
    reason: FinishReason = _FINISH.get(finish or "", "stop")
    if refusal := message.get("refusal") or fields.get("refusal"):
        parts.append(TextPart(refusal))
        reason = "refusal"
    elif message.get("content"):
        parts.append(TextPart(message["content"]))
    signed: dict[str, str] = {}
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        id = (call.get("id") or "").partition(_SEPARATOR)[0]
        parts.append(ToolCall(id, function.get("name") or "", function.get("arguments") or ""))
        if signature := _signature(call):
            signed[id] = signature
    if reason == "stop" and message.get("tool_calls"):  # some servers say "stop" after calls
        reason = "tool_calls"
    carried = {"tool_signatures": signed, "thought_signatures": fields.get("thought_signatures")}
    carried = {k: v for k, v in carried.items() if v}
    if carried or thinking:
        parts.append(OpaqueItem(PROVIDER, {"model": model, **carried}))
    return ModelResponse(Message("assistant", tuple(parts)), reason, usage, f"{PROVIDER}:{model}")


def _thinking_parts(blocks: Any, message: Mapping[str, Any]) -> list[Part]:
    """Thinking blocks as our parts; bare reasoning text (no blocks) as one unsigned part."""
    parts: list[Part] = []
    for block in blocks:
        if block.get("type") == "redacted_thinking":
            parts.append(Thinking(block.get("data") or "", None, True, PROVIDER))
        elif block.get("type") == "thinking":
            text, signature = block.get("thinking") or "", block.get("signature") or None
            parts.append(Thinking(text, signature, False, PROVIDER))
    if not parts and message.get("reasoning_content"):
        parts.append(Thinking(message["reasoning_content"], None, False, PROVIDER))
    return parts


def _signature(call: Mapping[str, Any]) -> str | None:
    """A tool call's thought signature, wherever LiteLLM put it."""
    function = call.get("function") or {}
    for fields in (call.get("provider_specific_fields"), function.get("provider_specific_fields")):
        if isinstance(fields, Mapping) and fields.get("thought_signature"):
            return str(fields["thought_signature"])
    _, separator, folded = (call.get("id") or "").partition(_SEPARATOR)
    return folded if separator and folded else None


class StreamAssembler:
    """Builds one response from streamed chunks (as JSON), passing fragments to `on_delta`.

    It gathers the assistant message in its non-streamed shape. Tool calls are keyed by
    `index` and may interleave; a thinking block comes in fragments with its signature
    last, so a fragment after a signature opens the next block.
    """

    def __init__(self, model: str, on_delta: OnDelta | None = None) -> None:
        self._model, self._on_delta = model, on_delta
        self._message: dict[str, Any] = dict.fromkeys(_TEXTS, "")
        self._blocks: list[dict[str, Any]] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._signatures: list[str] = []
        self._finish: str | None = None
        self._usage = Usage()

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Take one chunk; the last one carries the usage."""
        if chunk.get("usage"):
            self._usage = usage_from_wire(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            self._finish = choice.get("finish_reason") or self._finish
            delta = choice.get("delta") or {}
            for key, kind in _TEXTS.items():
                if delta.get(key):
                    self._message[key] += delta[key]
                    self._emit(Delta(kind, delta[key]))
            for block in delta.get("thinking_blocks") or ():
                self._thinking(block)
            for call in delta.get("tool_calls") or ():
                self._fragment(call)
            fields = delta.get("provider_specific_fields") or {}
            for signature in fields.get("thought_signatures") or ():
                if signature not in self._signatures:
                    self._signatures.append(signature)

    def _thinking(self, block: Mapping[str, Any]) -> None:
        if block.get("type") == "redacted_thinking":
            self._blocks.append(dict(block))
            return
        last = self._blocks[-1] if self._blocks else {}
        if last.get("type") != "thinking" or last.get("signature"):
            last = {"type": "thinking", "thinking": ""}
            self._blocks.append(last)
        last["thinking"] += block.get("thinking") or ""
        if block.get("signature"):
            last["signature"] = block["signature"]

    def _fragment(self, call: Mapping[str, Any]) -> None:
        index, function = call.get("index") or 0, call.get("function") or {}
        into = self._calls.setdefault(index, {"id": "", "function": {"name": "", "arguments": ""}})
        into["id"] = into["id"] or call.get("id") or ""
        into["function"]["name"] = into["function"]["name"] or function.get("name") or ""
        if signature := _signature(call):
            into["provider_specific_fields"] = {"thought_signature": signature}
        if function.get("arguments"):
            into["function"]["arguments"] += function["arguments"]
            self._emit(Delta("tool_arguments", function["arguments"], index))

    def _emit(self, delta: Delta) -> None:
        if self._on_delta is not None:
            self._on_delta(delta)

    def response(self) -> ModelResponse:
        """The assembled response."""
        calls = [{**c, "id": c["id"] or f"call_{i}"} for i, c in sorted(self._calls.items())]
        message = {**self._message, "thinking_blocks": self._blocks, "tool_calls": calls}
        message["provider_specific_fields"] = {"thought_signatures": self._signatures}
        return _response(message, self._finish, self._usage, self._model)


# --- errors -----------------------------------------------------------------------------------


def classify(error: openai.OpenAIError, model: str) -> ProviderError:
    """Our error for a LiteLLM error (a subclass of openai's): retry later, with the server's
    delay, or give up. A failure mid-stream comes wrapped; its original decides."""
    original = getattr(error, "original_exception", None)
    error = original if isinstance(original, openai.OpenAIError) else error
    where, detail = f"litellm model {model!r}", _detail(error)
    if _NO_KEY.search(detail):
        return Fatal(f"{where}: {detail}", PROVIDER, model)
    if isinstance(error, openai.APITimeoutError):
        return Retryable(f"{where}: the request timed out", PROVIDER, model)
    if isinstance(error, openai.APIConnectionError):
        return Retryable(f"{where}: connection failed: {detail}", PROVIDER, model)
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        return Fatal(f"{where}: {detail}", PROVIDER, model)
    if status in _RETRYABLE_STATUS or status >= 500:
        kept = getattr(error, "litellm_response_headers", None)  # `response` may be a stand-in
        delay = retry_after(kept or getattr(getattr(error, "response", None), "headers", {}))
        return Retryable(f"{where}: HTTP {status}: {detail}", PROVIDER, model, retry_after=delay)
    text = f"{where} rejected the request (HTTP {status}): {detail}"
    body = getattr(error, "body", None)
    code = body.get("code") if isinstance(body, Mapping) else None
    too_long = type(error).__name__ == "ContextWindowExceededError" or _TOO_LONG.search(detail)
    if too_long or code == "context_length_exceeded":
        return ContextLengthExceeded(text, PROVIDER, model)
    return Fatal(text, PROVIDER, model)


def _detail(error: openai.OpenAIError, limit: int = 500) -> str:
    """The server's message: the error body's, else LiteLLM's text without its prefixes."""
    body = getattr(error, "body", None)
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        message = str(body["message"])
    else:
        message = _PREFIXES.sub("", str(getattr(error, "message", "") or error))
        message = message.partition("\nTraceback (most recent call last)")[0]
    return message if len(message) <= limit else message[:limit] + "…"


# --- the provider -----------------------------------------------------------------------------


class LiteLLMProvider:
    """The `litellm:` provider; thread-safe and stateless (LiteLLM keeps its own HTTP clients)."""

    name = PROVIDER

    def __init__(self) -> None:
        self._litellm = load()

    def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """One `litellm.completion`; streamed (with usage) when `on_delta` is given."""
        _, model = split_model(request.model)
        wire = {**to_wire(request), **_connection(request.settings)}
        # Retries off: the Celery task retries, visibly. LiteLLM 1.106 imports its MCP gateway
        # (which needs the `mcp` package) for any tools unless told to skip it; ours are plain.
        wire.update(num_retries=0, max_retries=0, _skip_mcp_handler=True)
        try:
            if on_delta is None:
                return from_wire(self._litellm.completion(**wire).model_dump(), model)
            assembler = StreamAssembler(model, on_delta)
            stream = self._litellm.completion(
                **wire, stream=True, stream_options={"include_usage": True}
            )
            try:
                for chunk in stream:
                    assembler.add(chunk.model_dump())
            finally:
                _close(stream)
        except openai.OpenAIError as error:
            raise classify(error, model) from error
        # A stream that stops early gets a "stop" from LiteLLM; it notes the server's own.
        if stream.received_finish_reason or stream.intermittent_finish_reason:
            return assembler.response()
        message = f"litellm model {model!r}: the stream ended before the model finished"
        raise Retryable(message, PROVIDER, model)


def _close(stream: Any) -> None:
    """Close the HTTP response under a LiteLLM stream, which has no close of its own. Left to
    the garbage collector after a failure, it can close itself inside another request's lock
    on the same connection pool (LiteLLM shares one client) and hang that thread for good."""
    inner = getattr(stream, "completion_stream", None)
    for source in (inner, getattr(inner, "streaming_response", None)):
        close = getattr(source, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # the call's own outcome is what matters
                close()


def _connection(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`timeout`, `api_base` and, when the agent names its variable, `api_key` for one call."""
    value = settings.get("timeout")
    try:
        timeout = DEFAULT_TIMEOUT if value is None else float(value)
    except (TypeError, ValueError):
        timeout = -1.0
    if not 0 < timeout < math.inf:
        raise Fatal("litellm: model_settings['timeout'] must be positive seconds", PROVIDER)
    wire: dict[str, Any] = {"timeout": timeout}
    if settings.get("base_url"):
        wire["api_base"] = str(settings["base_url"])
    if settings.get("api_key_env"):  # else LiteLLM reads the provider's own variable
        key_env = str(settings["api_key_env"])
        wire["api_key"] = os.environ.get(key_env)
        if not wire["api_key"]:
            raise Fatal(f"litellm: no API key: set the {key_env} environment variable", PROVIDER)
    return wire
