"""OpenTelemetry traces: a span per run and per step, each run in a trace of its own.

Imported only when the OTEL_* variables ask for an exporter and the `otel` extra
is installed. Celery's task spans and the propagation of context through message
headers come from opentelemetry-instrumentation-celery; the GenAI spans are made
here from committed events (`tracker.Observer`).

A run's trace id is its run id. Its root span, `invoke_agent <agent>`, has an id
derived from the run id, so every worker knows it in advance; whichever worker
records the terminal event exports it, spanning the run from `run.started` on.
A step task that arrives without its run's trace (sent by a caller without
tracing, by the watchdog, or by beat) is made a child of the run span before the
instrumentation reads its headers. `stepwise.start_run` sent from a traced
caller stays in the caller's trace, and its span names the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from celery import signals
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from storage.events import MODEL_COMPLETED
from tasks.observability import genai
from tasks.observability.logs import Scrubber
from tasks.observability.tracker import RunFacts, StepDone, at
from tasks.settings import Settings

log = logging.getLogger(__name__)

# (trace id, span id) the next span this thread starts must take: the run span's.
_forced: ContextVar[tuple[int, int] | None] = ContextVar("stepwise_forced_ids", default=None)


class _RunIds(IdGenerator):
    """Random ids, except while the run span is started: then the run's own."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced else self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        return forced[0] if forced else self.inner.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return _forced.get() is None and self.inner.is_trace_id_random()


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)


class Tracing:
    """The spans of runs and steps (a `tracker.Sink`), and the run's trace for its tasks."""

    def __init__(self, provider: trace.TracerProvider, owned: bool, scrub: Scrubber) -> None:
        self.provider = provider
        self.owned = owned  # configured here, not by `opentelemetry-instrument`
        self.scrub = scrub
        self.tracer = provider.get_tracer("stepwise")
        inner = getattr(self.tracer, "id_generator", None)
        # A tracer of another SDK cannot take the run span's id: steps then have no root.
        self.run_spans = isinstance(inner, IdGenerator)
        if isinstance(inner, IdGenerator):
            self.tracer.id_generator = _RunIds(inner)  # type: ignore[attr-defined]
        self.sampler = getattr(self.tracer, "sampler", None)

    # Celery

    def adopt(self, task: Any = None, **_: Any) -> None:
        """`task_prerun`, ahead of the instrumentation: put a run's task in the run's trace."""
        if task is None or task.name not in genai.RUN_TASKS:
            return
        request = task.request
        run_id, _step = genai.task_ids(task.name, request.args, request.kwargs)
        if run_id is None:
            return
        incoming = genai.trace_id_of(getattr(request, "traceparent", None))
        run_trace = genai.run_trace_id(run_id)
        if incoming == run_trace or (incoming is not None and task.name == genai.START_RUN):
            return
        request.traceparent = genai.traceparent(
            run_trace, genai.run_span_id(run_id), self._sampled(run_trace)
        )
        request.tracestate = None

    def name_task(self, task: Any = None, **_: Any) -> None:
        """`task_prerun`, after the instrumentation: name the run and step on the task's span."""
        if task is None or task.name not in genai.RUN_TASKS:
            return
        run_id, step = genai.task_ids(task.name, task.request.args, task.request.kwargs)
        span = trace.get_current_span()
        if run_id is not None and span.is_recording():
            span.set_attributes(genai.common(run_id, None, step))

    def _sampled(self, trace_id: int) -> bool:
        """The sampler's decision for the run span, taken alike in every worker."""
        if self.sampler is None:
            return True
        decision = self.sampler.should_sample(Context(), trace_id, "invoke_agent").decision
        return bool(decision.is_sampled())

    # tracker.Sink

    def run_started(self, payload: dict[str, Any]) -> None:
        """Name the run on the span of the task that started it (maybe in the caller's trace)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                genai.common(payload["run_id"], str(payload["data"].get("agent") or ""))
            )

    def step_started(self, payload: dict[str, Any]) -> None:
        """Nothing: a step's span is made when it ends, from its start and end events."""

    def step_done(self, done: StepDone, facts: Callable[[], RunFacts | None]) -> None:
        """The step attempt's span, a child of its task's span (or else of the run span)."""
        known = facts()
        agent = known.agent if known else None
        if done.kind == "model":
            completed = done.end if done.end_type == MODEL_COMPLETED else None
            name = genai.model_span_name(str(done.start.get("model") or ""))
            attributes = genai.model_attributes(
                done.run_id, done.step, agent, done.start, completed
            )
            kind = SpanKind.CLIENT
        else:
            name = genai.tool_span_name(str(done.start.get("name") or ""))
            attributes = genai.tool_attributes(done.run_id, done.step, agent, done.start)
            kind = SpanKind.INTERNAL
        error = genai.error_type(done.end_type, done.end)
        if error is not None:
            attributes["error.type"] = error
        span = self.tracer.start_span(
            name,
            context=self._parent(done.run_id),
            kind=kind,
            attributes=attributes,
            start_time=_ns(done.started),
        )
        if error is not None:
            why = done.end.get("error") or done.end.get("reason") or error
            span.set_status(Status(StatusCode.ERROR, self.scrub(str(why))))
        span.end(end_time=_ns(done.ended))

    def _parent(self, run_id: str) -> Context | None:
        """None (the current span) when it is in the run's trace; else the run span."""
        current = trace.get_current_span().get_span_context()
        run_trace = genai.run_trace_id(run_id)
        if current.is_valid and current.trace_id == run_trace:
            return None
        flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if self._sampled(run_trace) else 0)
        root = SpanContext(run_trace, genai.run_span_id(run_id), True, flags)
        return trace.set_span_in_context(NonRecordingSpan(root), Context())

    def run_done(self, payload: dict[str, Any], facts: RunFacts | None) -> None:
        """The run span: the root of the run's trace, from its start to its terminal event."""
        if not self.run_spans:
            return
        run_id, data = payload["run_id"], payload["data"]
        agent = facts.agent if facts else ""
        attributes = genai.run_attributes(run_id, agent, facts.model if facts else None, data)
        status = str(data.get("status") or "")
        if status in ("failed", "timed_out"):
            attributes["error.type"] = status
        start = facts.started if facts and facts.started else at(payload)
        token = _forced.set((genai.run_trace_id(run_id), genai.run_span_id(run_id)))
        try:
            span = self.tracer.start_span(
                genai.run_span_name(agent),
                context=Context(),  # a root: nothing is current for it
                attributes=attributes,
                start_time=_ns(start),
            )
        finally:
            _forced.reset(token)
        if "error.type" in attributes:
            span.set_status(Status(StatusCode.ERROR, self.scrub(str(data.get("reason") or status))))
        span.end(end_time=_ns(at(payload)))

    # Worker lifecycle

    def flush(self, **_: Any) -> None:
        """`worker_process_shutdown`: send what a pool child still holds."""
        if self.owned and isinstance(self.provider, TracerProvider):
            self.provider.force_flush()

    def shutdown(self, **_: Any) -> None:
        """`worker_shutdown`: send everything and stop the exporters."""
        if self.owned and isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def configure(settings: Settings, scrub: Scrubber) -> Tracing:
    """Set up the SDK from the OTEL_* variables, unless something already has, and
    instrument Celery, with the adoption of run tasks ahead of the instrumentation."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # `opentelemetry-instrument` set it up
        tracing = Tracing(current, owned=False, scrub=scrub)
    else:
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "stepwise"}))
        provider = TracerProvider(resource=resource)
        for name in settings.traces_exporters:
            exporter = _exporter(name)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        tracing = Tracing(provider, owned=True, scrub=scrub)
    signals.task_prerun.connect(tracing.adopt, weak=False)
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()  # instrumented again below, so its receivers come after ours
    instrumentor.instrument(tracer_provider=tracing.provider)
    signals.task_prerun.connect(tracing.name_task, weak=False)
    signals.worker_process_shutdown.connect(tracing.flush, weak=False)
    signals.worker_shutdown.connect(tracing.shutdown, weak=False)
    return tracing


def _exporter(name: str) -> SpanExporter | None:
    """The exporter an SDK entry point names; it reads its own OTEL_EXPORTER_* variables."""
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        hint = " (pip install opentelemetry-exporter-otlp-proto-grpc)" if "grpc" in name else ""
        log.warning("no trace exporter named %r is installed%s: traces go nowhere", name, hint)
        return None
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter
