"""Prometheus metrics from workers, served on STEPWISE_METRICS_PORT.

Runs, steps, tokens and cost come from committed events (`tracker.Observer`);
retries and queue wait come from Celery's signals. A thread, gevent or solo
pool runs its tasks in the worker's own process, whose registry is served as is.
A prefork pool runs them in child processes, so it needs prometheus_client's
multiprocess mode: PROMETHEUS_MULTIPROC_DIR names an empty directory where each
child keeps its values, and the worker's main process serves their sum.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from storage.events import MODEL_COMPLETED
from tasks.observability import PUBLISHED_AT
from tasks.observability.tracker import RunFacts, StepDone
from tasks.settings import Settings

log = logging.getLogger(__name__)

#: Model calls take seconds to minutes; tools anything from milliseconds up.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_TYPES = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cached_tokens": "cached_input",
    "cache_write_tokens": "cache_write",
    "reasoning_tokens": "reasoning",
}


class Metrics:
    """The metrics a worker records, registered in `registry`; also a `tracker.Sink`."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def counter(name: str, text: str, labels: list[str]) -> Counter:
            return Counter(name, text, labels, registry=registry)

        self.runs_started = counter(
            "stepwise_runs_started", "Runs that started on this worker.", ["agent"]
        )
        self.runs_finished = counter(
            "stepwise_runs_finished", "Runs that ended, by terminal status.", ["agent", "status"]
        )
        self.step_seconds = Histogram(
            "stepwise_step_duration_seconds",
            "Seconds from a step attempt's start event to the event that ended it.",
            ["kind", "outcome"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.model_calls = counter(
            "stepwise_model_calls", "Model calls that answered.", ["model", "finish_reason"]
        )
        self.tokens = counter("stepwise_model_tokens", "Tokens of model calls.", ["model", "type"])
        self.cost = counter(
            "stepwise_model_cost_usd", "What model calls cost, by the price table.", ["model"]
        )
        self.retries = counter("stepwise_task_retries", "Celery task retries.", ["task", "error"])
        self.queue_wait = Histogram(
            "stepwise_queue_wait_seconds",
            "Seconds from a task's publication (or its ETA) to its start on a worker.",
            ["task", "queue"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )

    # tracker.Sink

    def run_started(self, payload: dict[str, Any]) -> None:
        """Count a started run."""
        self.runs_started.labels(str(payload["data"].get("agent") or "")).inc()

    def step_started(self, payload: dict[str, Any]) -> None:
        """Nothing: a step is measured when it ends."""

    def step_done(self, done: StepDone, facts: Callable[[], RunFacts | None]) -> None:
        """A step attempt's duration; a model call's tokens and cost."""
        seconds = max(0.0, (done.ended - done.started).total_seconds())
        self.step_seconds.labels(done.kind, done.outcome).observe(seconds)
        if done.end_type != MODEL_COMPLETED:
            return
        model = str(done.start.get("model") or done.end.get("model") or "")
        self.model_calls.labels(model, str(done.end.get("finish_reason") or "")).inc()
        usage = done.end.get("usage") or {}
        for key, kind in TOKEN_TYPES.items():
            count = usage.get(key)
            if isinstance(count, int) and count > 0:
                self.tokens.labels(model, kind).inc(count)
        cost = done.end.get("cost_usd")
        if isinstance(cost, int | float) and cost >= 0:
            self.cost.labels(model).inc(cost)

    def run_done(self, payload: dict[str, Any], facts: RunFacts | None) -> None:
        """Count an ended run by its terminal status."""
        status = str(payload["data"].get("status") or payload["type"].removeprefix("run."))
        self.runs_finished.labels(facts.agent if facts else "", status).inc()

    # Celery signals

    def on_prerun(self, task: Any = None, **_: Any) -> None:
        """`task_prerun`: how long the task waited in its queue."""
        request = getattr(task, "request", None)
        wait = queue_wait(request, time.time()) if request is not None else None
        if wait is not None:
            queue = (getattr(request, "delivery_info", None) or {}).get("routing_key") or ""
            self.queue_wait.labels(task.name, str(queue)).observe(wait)

    def on_retry(self, sender: Any = None, reason: Any = None, **_: Any) -> None:
        """`task_retry`: count the retry by task and the error that caused it."""
        name = getattr(sender, "name", None) or str(sender)
        cause = getattr(reason, "exc", None) or reason  # Celery's Retry wraps the error
        self.retries.labels(name, type(cause).__name__ if cause is not None else "").inc()


def queue_wait(request: Any, now: float) -> float | None:
    """Seconds a task waited: from its publication, or its ETA if later, until `now`."""
    sent = getattr(request, PUBLISHED_AT, None)
    if not isinstance(sent, int | float) or isinstance(sent, bool):
        return None
    due = float(sent)
    eta = getattr(request, "eta", None)
    if isinstance(eta, str):
        with contextlib.suppress(ValueError):
            due = max(due, datetime.fromisoformat(eta).timestamp())
    return max(0.0, now - due)


def registry_to_serve(settings: Settings, prefork: bool) -> CollectorRegistry:
    """The registry the worker serves; refuses a prefork pool without a multiprocess dir."""
    if settings.metrics_dir:
        folder = Path(settings.metrics_dir)
        folder.mkdir(parents=True, exist_ok=True)
        # Values left by an earlier run of this worker would add to this one's.
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
        return registry
    if prefork:
        raise SystemExit(
            "stepwise: STEPWISE_METRICS_PORT with the prefork pool needs PROMETHEUS_MULTIPROC_DIR, "
            "an empty directory for this worker alone, set before the worker starts; or use "
            "-P threads or -P gevent (docs/observability.md)"
        )
    return REGISTRY


def serve(settings: Settings, registry: CollectorRegistry) -> None:
    """Serve `/metrics` on STEPWISE_METRICS_ADDR:STEPWISE_METRICS_PORT from a daemon thread."""
    assert settings.metrics_port is not None
    try:
        start_http_server(settings.metrics_port, settings.metrics_addr, registry)
    except OSError as error:
        raise SystemExit(
            f"stepwise: cannot serve metrics on {settings.metrics_addr}:{settings.metrics_port}: "
            f"{error}"
        ) from None
    log.info(
        "metrics on http://%s:%s/metrics (pid %s)",
        settings.metrics_addr,
        settings.metrics_port,
        os.getpid(),
    )
