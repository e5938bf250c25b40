"""Observability for workers: Prometheus metrics, OpenTelemetry traces, JSON logs.

`observe(app)` connects Celery signal receivers. Each reads the settings when a
worker starts (or sets up its logging) and does nothing unless asked:

- STEPWISE_METRICS_PORT: serve Prometheus metrics (`metrics.py`);
- the standard OTEL_* variables naming an exporter, with the `otel` extra
  installed: export traces (`traces.py`);
- STEPWISE_LOG_FORMAT=json: log one JSON object per line (`logs.py`).

Metrics and traces come from the events the store commits (`tracker.py`, through
`storage.store.OBSERVERS`) and from Celery's signals. With nothing configured a
worker registers no observer and starts no thread; every process that sends a
task stamps its publication time in a header, for the queue-wait metric. See
docs/observability.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, signals

from storage.store import OBSERVERS
from tasks.errors import ConfigError
from tasks.observability.logs import CeleryJsonLogs, Scrubber
from tasks.observability.tracker import Observer, Sink
from tasks.settings import Settings

__all__ = ["PUBLISHED_AT", "Observability", "observe", "stamp"]

log = logging.getLogger(__name__)

#: The header every published task carries: when it was sent (seconds since the epoch).
PUBLISHED_AT = "stepwise_published_at"


def observe(app: Celery) -> Observability:
    """Connect the receivers that observe this app's workers; see the module's docstring."""
    observability = Observability(app)
    observability.connect()
    return observability


def stamp(headers: Any = None, **_: Any) -> None:
    """`before_task_publish`: note the time of publication in the message's headers."""
    if isinstance(headers, dict):
        headers[PUBLISHED_AT] = time.time()


class Observability:
    """What one process observes, set up when its worker starts."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.logs: CeleryJsonLogs | None = None
        self.sinks: list[Sink] = []
        self.observer: Observer | None = None

    def connect(self) -> None:
        """Connect the receivers; they are cheap until a worker asks for something."""
        signals.before_task_publish.connect(stamp, weak=False)
        signals.celeryd_init.connect(self._celeryd_init, weak=False)
        signals.worker_init.connect(self._worker_init, weak=False)
        signals.after_setup_logger.connect(self._logger, weak=False)
        signals.after_setup_task_logger.connect(self._logger, weak=False)
        signals.celeryd_after_setup.connect(self._celeryd_after_setup, weak=False)
        signals.worker_ready.connect(self._worker_ready, weak=False)

    def _json_logs(self, settings: Settings) -> CeleryJsonLogs | None:
        if settings.log_format != "json":
            return None
        if self.logs is None:
            self.logs = CeleryJsonLogs(Scrubber(settings.secrets))
            signals.task_prerun.connect(self.logs.on_prerun, weak=False)
            signals.task_postrun.connect(self.logs.on_postrun, weak=False)
            signals.worker_shutting_down.connect(self.logs.on_shutting_down, weak=False)
        return self.logs

    def _celeryd_init(self, **kwargs: Any) -> None:
        try:
            logs = self._json_logs(Settings.from_env())
        except ConfigError:
            return  # worker_init says why
        if logs is not None:
            logs.on_init(**kwargs)

    def _celeryd_after_setup(self, **kwargs: Any) -> None:
        if self.logs is not None:
            self.logs.on_setup(**kwargs)

    def _worker_ready(self, **kwargs: Any) -> None:
        if self.logs is not None:
            self.logs.on_ready(**kwargs)

    def _logger(self, **kwargs: Any) -> None:
        try:
            logs = self._json_logs(Settings.from_env())
        except ConfigError:
            return
        if logs is not None:
            logs.on_logger(**kwargs)

    def _worker_init(self, sender: Any = None, **_: Any) -> None:
        """Start the metrics server and the tracing of a worker, as configured."""
        try:
            settings = Settings.from_env()
        except ConfigError as error:
            raise SystemExit(f"stepwise: {error}") from None
        self._json_logs(settings)
        scrub = Scrubber(settings.secrets)
        if settings.metrics_port is not None:
            self._metrics(settings, _is_prefork(getattr(sender, "pool_cls", None)))
        if settings.traces_exporters:
            self._traces(settings, scrub)
        if self.sinks and self.observer is None:
            self.observer = Observer(self.sinks)
            OBSERVERS.add(self.observer)

    def _metrics(self, settings: Settings, prefork: bool) -> None:
        from tasks.observability import metrics

        registry = metrics.registry_to_serve(settings, prefork)
        recorder = metrics.Metrics()
        signals.task_prerun.connect(recorder.on_prerun, weak=False)
        signals.task_retry.connect(recorder.on_retry, weak=False)
        metrics.serve(settings, registry)
        self.sinks.append(recorder)

    def _traces(self, settings: Settings, scrub: Scrubber) -> None:
        try:
            from tasks.observability import traces
        except ImportError as error:
            log.warning(
                "OTEL_* variables ask for traces, but the otel extra is not installed (%s): "
                "pip install 'stepwise[otel]'",
                error,
            )
            return

        self.sinks.append(traces.configure(settings, scrub))


def _is_prefork(pool_cls: Any) -> bool:
    """True for the prefork pool, whose tasks run in child processes."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    try:
        found = get_implementation(pool_cls) if pool_cls is not None else None
    except Exception:
        return False
    return isinstance(found, type) and issubclass(found, TaskPool)
