"""Pure mappings for traces: run ids to trace ids, events to GenAI span attributes.

No OpenTelemetry import here, so unit tests (and a worker without the `otel`
extra) can read these like a table. Attribute names follow the OpenTelemetry
semantic conventions for generative AI (`gen_ai.*`); ours are `stepwise.*`.
Prompts, outputs and tool arguments never become attributes.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from tasks.runs import is_uuid

AttributeValue = str | bool | int | float | tuple[str, ...]
Attributes = dict[str, AttributeValue]

#: The tasks that belong to a run and carry its id; `start_run` takes it as a keyword.
RUN_TASKS = frozenset(
    {"stepwise.start_run", "stepwise.model_step", "stepwise.tool_step", "stepwise.finish_run"}
)
START_RUN = "stepwise.start_run"

USAGE_ATTRIBUTES = {
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cached_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
}


def task_ids(name: str, args: Any, kwargs: Any) -> tuple[str | None, int | None]:
    """(run id, step number) of a Stepwise task from its arguments; Nones for other tasks."""
    if name not in RUN_TASKS:
        return None, None
    args = list(args or ())
    kwargs = kwargs if isinstance(kwargs, Mapping) else {}
    run_id = kwargs.get("run_id", args[0] if args else None)
    step = kwargs.get("number", args[1] if len(args) > 1 else None)
    return (
        run_id if is_uuid(run_id) else None,
        step if isinstance(step, int) and not isinstance(step, bool) else None,
    )


def run_trace_id(run_id: str) -> int:
    """A run's trace id is its run id: paste the id into the trace viewer to find it."""
    return uuid.UUID(run_id).int


def run_span_id(run_id: str) -> int:
    """The run span's id, derived from the run id, so every worker knows it in advance."""
    digest = hashlib.sha256(f"stepwise.run:{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """A W3C `traceparent` header value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def trace_id_of(header: Any) -> int | None:
    """The trace id of a W3C `traceparent` value, or None when there is none or it is malformed."""
    if not isinstance(header, str):
        return None
    parts = header.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    try:
        trace_id = int(parts[1], 16)
    except ValueError:
        return None
    return trace_id or None


def split_model(model: str) -> tuple[str, str]:
    """`openai:gpt-4.1-mini` -> (`openai`, `gpt-4.1-mini`); no provider prefix -> (`""`, model)."""
    provider, sep, name = model.partition(":")
    return (provider, name) if sep and provider and name else ("", model)


def run_span_name(agent: str) -> str:
    """The semantic conventions' name for an agent invocation."""
    return f"invoke_agent {agent}"


def model_span_name(model: str) -> str:
    """`chat <model>`, the model as requested."""
    return f"chat {split_model(model)[1]}"


def tool_span_name(tool: str) -> str:
    """`execute_tool <tool>`."""
    return f"execute_tool {tool}"


def common(run_id: str, agent: str | None, step: int | None = None) -> Attributes:
    """The attributes every Stepwise span carries."""
    found: Attributes = {"stepwise.run_id": run_id}
    if agent:
        found["stepwise.agent"] = agent
        found["gen_ai.agent.name"] = agent
    if step is not None:
        found["stepwise.step"] = step
    return found


def usage(data: Mapping[str, Any] | None) -> Attributes:
    """`gen_ai.usage.*` from an event's `usage`; zeros beyond the first two are left out."""
    found: Attributes = {}
    for key, name in USAGE_ATTRIBUTES.items():
        value = (data or {}).get(key)
        if isinstance(value, int) and (value or key in ("input_tokens", "output_tokens")):
            found[name] = value
    return found


def model_attributes(
    run_id: str,
    step: int,
    agent: str | None,
    started: Mapping[str, Any],
    completed: Mapping[str, Any] | None,
) -> Attributes:
    """A model step's span: from its `model.started` data, and `model.completed` data if any."""
    requested = str(started.get("model") or (completed or {}).get("model") or "")
    provider, name = split_model(requested)
    found = common(run_id, agent, step) | {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": name,
        "stepwise.attempt": int(started.get("attempt") or 1),
    }
    if provider:
        found["gen_ai.provider.name"] = provider
    if completed is not None:
        if completed.get("model"):
            found["gen_ai.response.model"] = split_model(str(completed["model"]))[1]
        if completed.get("finish_reason"):
            found["gen_ai.response.finish_reasons"] = (str(completed["finish_reason"]),)
        found |= usage(completed.get("usage"))
        if isinstance(completed.get("cost_usd"), int | float):
            found["stepwise.cost_usd"] = float(completed["cost_usd"])
    return found


def tool_attributes(
    run_id: str, step: int, agent: str | None, started: Mapping[str, Any]
) -> Attributes:
    """A tool step's span, from its `tool.started` data (never the arguments)."""
    found = common(run_id, agent, step) | {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": str(started.get("name") or ""),
        "gen_ai.tool.type": "function",
        "stepwise.attempt": int(started.get("attempt") or 1),
    }
    if started.get("call_id"):
        found["gen_ai.tool.call.id"] = str(started["call_id"])
    return found


def run_attributes(
    run_id: str, agent: str | None, model: str | None, finished: Mapping[str, Any]
) -> Attributes:
    """The run span's attributes, from the run's terminal event data."""
    found = common(run_id, agent) | {
        "gen_ai.operation.name": "invoke_agent",
        "stepwise.status": str(finished.get("status") or ""),
    }
    if model:
        provider, name = split_model(model)
        found["gen_ai.request.model"] = name
        if provider:
            found["gen_ai.provider.name"] = provider
    found |= usage(finished.get("usage"))
    if isinstance(finished.get("cost_usd"), int | float):
        found["stepwise.cost_usd"] = float(finished["cost_usd"])
    return found


def error_type(end_type: str, end: Mapping[str, Any]) -> str | None:
    """`error.type` for a step that ended this way, or None when it succeeded."""
    if end_type == "model.retrying":
        return "retryable"
    if end_type == "tool.failed":
        return "invalid_tool_call" if end.get("invalid") else "tool_error"
    if end_type == "tool.outcome_unknown":
        return "outcome_unknown"
    if end_type.startswith("run."):  # the run ended while the step was open
        return end_type.removeprefix("run.")
    return None
