"""Traces without a worker: the GenAI attribute table, run trace ids, spans from events,
and what happens when nothing (or no SDK) is configured."""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tasks.observability
from tasks import app
from tasks.observability import Observability, genai
from tasks.observability.logs import Scrubber
from tasks.observability.traces import Tracing
from tasks.observability.tracker import Observer
from tasks.settings import Settings

RUN = "70dcc1dc-a0ab-4550-92e7-972a17646655"
KEY = "sk-test-0123456789abcdefghij"


def event(kind: str, seq: int, step: int | None, data: dict[str, Any], at: str) -> dict[str, Any]:
    """An event payload as the store hands it to observers."""
    return {
        "run_id": RUN,
        "seq": seq,
        "type": kind,
        "step": step,
        "data": data,
        "at": f"2026-11-21T12:00:{at}+00:00",
    }


USAGE_1 = {"input_tokens": 120, "output_tokens": 30, "cached_tokens": 100, "cache_write_tokens": 0}
USAGE_3 = {"input_tokens": 200, "output_tokens": 12}
A_RUN = [
    event("run.started", 2, None, {"agent": "support", "model": "openai:gpt-4.1-mini"}, "00"),
    event("model.started", 3, 1, {"model": "openai:gpt-4.1-mini", "attempt": 1}, "01"),
    event(
        "model.completed",
        4,
        1,
        {
            "finish_reason": "tool_calls",
            "text": "the secret plan",
            "tool_calls": [{"id": "call_1", "name": "lookup", "arguments": '{"q": "A-1"}'}],
            "usage": USAGE_1,
            "cost_usd": 0.0001,
            "model": "gpt-4.1-mini-2025-04-14",
        },
        "02",
    ),
    event(
        "tool.started",
        5,
        2,
        {"call_id": "call_1", "name": "lookup", "arguments": '{"q": "A-1"}', "attempt": 1},
        "03",
    ),
    event("tool.failed", 6, 2, {"call_id": "call_1", "name": "lookup", "error": KEY}, "04"),
    event("model.started", 7, 3, {"model": "openai:gpt-4.1-mini", "attempt": 1}, "05"),
    event(
        "model.completed",
        8,
        3,
        {"finish_reason": "stop", "text": "done", "usage": USAGE_3, "cost_usd": None, "model": "x"},
        "06",
    ),
    event(
        "run.succeeded",
        9,
        None,
        {"status": "succeeded", "usage": {"input_tokens": 320, "output_tokens": 42}, "result": "d"},
        "07",
    ),
]


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "expected"),
    [
        ("stepwise.model_step", [RUN, 3], {}, (RUN, 3)),
        ("stepwise.tool_step", [], {"run_id": RUN, "number": 2}, (RUN, 2)),
        ("stepwise.finish_run", [RUN], {}, (RUN, None)),
        ("stepwise.start_run", [], {"run_id": RUN, "agent": "a", "input": "hi"}, (RUN, None)),
        ("stepwise.start_run", [], {"agent": "a", "input": "hi"}, (None, None)),
        ("stepwise.model_step", ["not-a-uuid", 3], {}, (None, 3)),
        ("stepwise.watchdog", [], {}, (None, None)),
        ("myapp.other", [RUN, 3], {}, (None, None)),
    ],
)
def test_a_run_task_names_its_run_and_step_from_its_arguments(name, args, kwargs, expected):
    assert genai.task_ids(name, args, kwargs) == expected


def test_a_run_trace_id_is_its_run_id_and_its_span_id_is_derived_from_it_alone():
    assert f"{genai.run_trace_id(RUN):032x}" == RUN.replace("-", "")
    assert genai.run_span_id(RUN) == genai.run_span_id(str(uuid.UUID(RUN)))
    assert genai.run_span_id(RUN) != genai.run_span_id(str(uuid.uuid4()))
    assert 0 < genai.run_span_id(RUN) < 2**64


def test_a_traceparent_round_trips_and_a_malformed_one_has_no_trace():
    header = genai.traceparent(genai.run_trace_id(RUN), genai.run_span_id(RUN), sampled=True)
    assert header.startswith("00-" + RUN.replace("-", "")) and header.endswith("-01")
    assert genai.trace_id_of(header) == genai.run_trace_id(RUN)
    assert genai.traceparent(1, 2, sampled=False).endswith("-00")
    for bad in (None, "", "00-xyz-abc-01", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", 42):
        assert genai.trace_id_of(bad) is None


def test_a_model_call_maps_to_the_genai_attributes_without_its_text():
    started, completed = A_RUN[1]["data"], A_RUN[2]["data"]

    found = genai.model_attributes(RUN, 1, "support", started, completed)

    assert found == {
        "stepwise.run_id": RUN,
        "stepwise.agent": "support",
        "gen_ai.agent.name": "support",
        "stepwise.step": 1,
        "stepwise.attempt": 1,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4.1-mini",
        "gen_ai.response.model": "gpt-4.1-mini-2025-04-14",
        "gen_ai.response.finish_reasons": ("tool_calls",),
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "stepwise.cost_usd": 0.0001,
    }
    assert genai.model_span_name(started["model"]) == "chat gpt-4.1-mini"


def test_a_model_call_that_never_answered_has_the_request_only():
    found = genai.model_attributes(RUN, 1, None, {"model": "scripted:demo", "attempt": 2}, None)

    assert found["gen_ai.request.model"] == "demo"
    assert found["gen_ai.provider.name"] == "scripted"
    assert found["stepwise.attempt"] == 2
    assert not any(k.startswith("gen_ai.usage") or k.startswith("gen_ai.response") for k in found)
    assert "stepwise.agent" not in found


def test_a_tool_call_maps_to_execute_tool_without_its_arguments():
    found = genai.tool_attributes(RUN, 2, "support", A_RUN[3]["data"])

    assert found["gen_ai.operation.name"] == "execute_tool"
    assert found["gen_ai.tool.name"] == "lookup"
    assert found["gen_ai.tool.call.id"] == "call_1"
    assert found["stepwise.step"] == 2
    assert "A-1" not in repr(found)
    assert genai.tool_span_name("lookup") == "execute_tool lookup"


def test_a_run_maps_to_invoke_agent_with_its_totals_and_status():
    found = genai.run_attributes(RUN, "support", "openai:gpt-4.1-mini", A_RUN[-1]["data"])

    assert found["gen_ai.operation.name"] == "invoke_agent"
    assert found["gen_ai.request.model"] == "gpt-4.1-mini"
    assert found["gen_ai.usage.input_tokens"] == 320
    assert found["gen_ai.usage.output_tokens"] == 42
    assert found["stepwise.status"] == "succeeded"
    assert "stepwise.step" not in found and "stepwise.cost_usd" not in found
    assert genai.run_span_name("support") == "invoke_agent support"


@pytest.mark.parametrize(
    ("end_type", "end", "expected"),
    [
        ("model.completed", {}, None),
        ("tool.completed", {}, None),
        ("model.retrying", {"error": "429"}, "retryable"),
        ("tool.failed", {"invalid": True}, "invalid_tool_call"),
        ("tool.failed", {"invalid": False}, "tool_error"),
        ("run.failed", {"reason": "model step 1 failed"}, "failed"),
        ("run.cancelled", {}, "cancelled"),
    ],
)
def test_the_error_type_says_how_a_step_ended(end_type, end, expected):
    assert genai.error_type(end_type, end) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_EXPORTER_OTLP_HEADERS": "a=b"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp_proto_http",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp_proto_http",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp_proto_http",)),
        (
            {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("otlp_proto_grpc", "console"),
        ),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, ()),
    ],
)
def test_the_otel_variables_ask_for_exporters_only_when_they_name_one(env, expected):
    assert Settings.from_env(env).traces_exporters == expected


def spans_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Feed events through an observer with tracing to memory; the finished spans by name."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    observer = Observer([Tracing(provider, owned=True, scrub=Scrubber([KEY]))])
    for payload in events:
        observer(None, payload)  # type: ignore[arg-type]  # run.started primes the facts
    return {span.name: span for span in memory.get_finished_spans()}


def test_steps_become_spans_under_a_run_span_whose_ids_come_from_the_run_id():
    spans = spans_of(A_RUN)

    assert set(spans) == {"invoke_agent support", "chat gpt-4.1-mini", "execute_tool lookup"}
    run = spans["invoke_agent support"]
    assert run.context.trace_id == uuid.UUID(RUN).int
    assert run.context.span_id == genai.run_span_id(RUN)
    assert run.parent is None
    assert run.attributes["gen_ai.usage.input_tokens"] == 320
    assert run.attributes["gen_ai.request.model"] == "gpt-4.1-mini"
    assert run.start_time < run.end_time
    assert run.status.status_code == trace.StatusCode.UNSET
    tool = spans["execute_tool lookup"]
    assert tool.parent.span_id == run.context.span_id
    assert tool.context.trace_id == run.context.trace_id
    assert tool.attributes["error.type"] == "tool_error"
    assert tool.status.status_code == trace.StatusCode.ERROR
    assert KEY not in tool.status.description and "[REDACTED]" in tool.status.description
    assert (tool.end_time - tool.start_time) == 1_000_000_000  # from tool.started to tool.failed


def test_both_model_calls_become_chat_spans_with_their_own_usage():
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    observer = Observer([Tracing(provider, owned=True, scrub=Scrubber())])
    for payload in A_RUN:
        observer(None, payload)  # type: ignore[arg-type]

    chats = [s for s in memory.get_finished_spans() if s.name.startswith("chat ")]

    assert [s.attributes["stepwise.step"] for s in chats] == [1, 3]
    assert [s.attributes["gen_ai.response.finish_reasons"] for s in chats] == [
        ("tool_calls",),
        ("stop",),
    ]
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in chats] == [120, 200]
    assert all(s.kind == trace.SpanKind.CLIENT for s in chats)
    assert all(s.attributes["stepwise.agent"] == "support" for s in chats)
    assert not any("secret plan" in repr(s.attributes) for s in memory.get_finished_spans())


def test_a_model_call_open_when_its_run_fails_ends_as_an_error_span():
    failing = [
        *A_RUN[:2],
        event("run.failed", 4, None, {"status": "failed", "reason": f"bad key {KEY}"}, "09"),
    ]

    spans = spans_of(failing)

    chat, run = spans["chat gpt-4.1-mini"], spans["invoke_agent support"]
    assert chat.attributes["error.type"] == "failed"
    assert run.status.status_code == trace.StatusCode.ERROR
    assert run.attributes["error.type"] == "failed"
    assert KEY not in run.status.description


def test_a_step_task_without_its_runs_trace_is_adopted_by_the_run_span():
    tracing = Tracing(TracerProvider(), owned=True, scrub=Scrubber())

    def task(name: str, traceparent: str | None, *args: Any, **kwargs: Any) -> Any:
        request = type("Request", (), {"args": args, "kwargs": kwargs})()
        if traceparent:
            request.traceparent = traceparent
        return type("Task", (), {"name": name, "request": request})()

    foreign = genai.traceparent(12345, 678, sampled=True)
    own = genai.traceparent(genai.run_trace_id(RUN), 99, sampled=True)
    adopted = genai.traceparent(genai.run_trace_id(RUN), genai.run_span_id(RUN), sampled=True)
    cases = [
        (task("stepwise.model_step", None, RUN, 1), adopted),  # sent without tracing
        (task("stepwise.tool_step", foreign, RUN, 2), adopted),  # sent by the watchdog
        (task("stepwise.model_step", own, RUN, 3), own),  # already in the run's trace
        (task("stepwise.start_run", None, run_id=RUN), adopted),
        (task("stepwise.start_run", foreign, run_id=RUN), foreign),  # the caller's trace stays
        (task("stepwise.watchdog", foreign), foreign),
    ]
    for each, expected in cases:
        tracing.adopt(task=each)
        assert getattr(each.request, "traceparent", None) == expected, each.name


def test_nothing_configured_sets_up_no_exporter_no_observer_and_no_thread(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "STEPWISE_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("STEPWISE_LOG_FORMAT", raising=False)
    threads = set(threading.enumerate())  # an earlier test's idle threads may end meanwhile
    observability = Observability(app)

    observability._worker_init(sender=None)

    assert observability.sinks == [] and observability.observer is None
    assert observability.logs is None
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert set(threading.enumerate()) <= threads


def test_traces_asked_for_without_the_otel_extra_warn_and_do_nothing(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.delenv("STEPWISE_METRICS_PORT", raising=False)
    # As if the extra were missing: opentelemetry-api comes with other packages, the SDK not.
    for name in list(sys.modules):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation")):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "tasks.observability.traces", raising=False)
    monkeypatch.delattr(tasks.observability, "traces", raising=False)
    observability = Observability(app)

    with caplog.at_level(logging.WARNING, logger="tasks.observability"):
        observability._worker_init(sender=None)

    assert observability.sinks == [] and observability.observer is None
    assert "pip install 'stepwise[otel]'" in caplog.text
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
