"""Metrics and JSON logs without a worker: the event-to-metric mapping, queue wait,
the scrubber, the JSON line, the store's observer hook."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Retry
from prometheus_client import CollectorRegistry

from storage.store import Observers
from tasks.observability import PUBLISHED_AT, _is_prefork, stamp
from tasks.observability.logs import CeleryJsonLogs, JsonLines, Scrubber
from tasks.observability.metrics import Metrics, queue_wait, registry_to_serve
from tasks.observability.tracker import Observer
from tasks.settings import Settings
from tests.test_unit_telemetry import A_RUN, KEY, RUN, event


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_events_become_run_step_token_and_cost_metrics():
    registry = CollectorRegistry()
    observer = Observer([Metrics(registry)])
    retry = [
        event("model.started", 10, 5, {"model": "openai:gpt-4.1-mini", "attempt": 1}, "08"),
        event("model.retrying", 11, 5, {"error": "HTTP 429", "countdown": 2.0, "attempt": 1}, "10"),
    ]
    for payload in [*A_RUN[:-1], *retry, A_RUN[-1]]:
        observer(None, payload)  # type: ignore[arg-type]

    model = "openai:gpt-4.1-mini"
    assert sample(registry, "stepwise_runs_started_total", agent="support") == 1
    assert (
        sample(registry, "stepwise_runs_finished_total", agent="support", status="succeeded") == 1
    )
    steps = "stepwise_step_duration_seconds"
    assert sample(registry, f"{steps}_count", kind="model", outcome="succeeded") == 2
    assert sample(registry, f"{steps}_sum", kind="model", outcome="succeeded") == 2.0
    assert sample(registry, f"{steps}_count", kind="model", outcome="retried") == 1
    assert sample(registry, f"{steps}_sum", kind="model", outcome="retried") == 2.0
    assert sample(registry, f"{steps}_count", kind="tool", outcome="failed") == 1
    assert sample(registry, f"{steps}_bucket", kind="tool", outcome="failed", le="1.0") == 1
    assert sample(registry, f"{steps}_bucket", kind="tool", outcome="failed", le="0.5") == 0
    tokens = "stepwise_model_tokens_total"
    assert sample(registry, tokens, model=model, type="input") == 320
    assert sample(registry, tokens, model=model, type="output") == 42
    assert sample(registry, tokens, model=model, type="cached_input") == 100
    assert sample(registry, tokens, model=model, type="cache_write") is None  # zero: no series
    assert sample(registry, "stepwise_model_cost_usd_total", model=model) == pytest.approx(0.0001)
    calls = "stepwise_model_calls_total"
    assert sample(registry, calls, model=model, finish_reason="tool_calls") == 1
    assert sample(registry, calls, model=model, finish_reason="stop") == 1


def test_celery_signals_become_retry_and_queue_wait_metrics():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    headers: dict[str, Any] = {}
    stamp(headers=headers)
    request = SimpleNamespace(
        delivery_info={"routing_key": "stepwise.model"}, eta=None, **{PUBLISHED_AT: 100.0}
    )
    task = SimpleNamespace(name="stepwise.model_step", request=request)

    metrics.on_prerun(task=task)
    metrics.on_prerun(task=SimpleNamespace(name="x", request=SimpleNamespace()))  # no stamp
    metrics.on_retry(sender=task, reason=Retry(exc=TimeoutError("slow")))

    assert isinstance(headers[PUBLISHED_AT], float)
    wait = "stepwise_queue_wait_seconds"
    assert (
        sample(registry, f"{wait}_count", task="stepwise.model_step", queue="stepwise.model") == 1
    )
    assert sample(registry, f"{wait}_count", task="x", queue="") is None
    retries = "stepwise_task_retries_total"
    assert sample(registry, retries, task="stepwise.model_step", error="TimeoutError") == 1


def test_queue_wait_counts_from_publication_or_from_the_eta_whichever_is_later():
    eta = datetime.fromtimestamp(130.0, UTC).isoformat()

    assert queue_wait(SimpleNamespace(**{PUBLISHED_AT: 100.0}), now=100.25) == 0.25
    assert queue_wait(SimpleNamespace(eta=eta, **{PUBLISHED_AT: 100.0}), now=131.0) == 1.0
    assert queue_wait(SimpleNamespace(**{PUBLISHED_AT: 100.0}), now=99.0) == 0.0  # clock skew
    assert queue_wait(SimpleNamespace(), now=1.0) is None
    assert queue_wait(SimpleNamespace(**{PUBLISHED_AT: "soon"}), now=1.0) is None


def test_a_prefork_worker_with_metrics_needs_a_multiprocess_dir(tmp_path):
    settings = Settings(metrics_port=9999)

    with pytest.raises(SystemExit, match="PROMETHEUS_MULTIPROC_DIR"):
        registry_to_serve(settings, prefork=True)

    stale = tmp_path / "counter_123.db"
    stale.write_bytes(b"old")
    registry_to_serve(Settings(metrics_port=9999, metrics_dir=str(tmp_path)), prefork=True)
    assert not stale.exists()  # an earlier run's values would add to this one's
    assert _is_prefork("prefork") and not _is_prefork("threads") and not _is_prefork("solo")


def test_the_scrubber_removes_configured_secrets_and_key_shaped_strings():
    scrub = Scrubber(["an-anthropic-secret-value", 'we"ird\\secret'])

    assert scrub("key an-anthropic-secret-value used") == "key [REDACTED] used"
    assert scrub(json.dumps('we"ird\\secret')) == '"[REDACTED]"'  # as it appears in JSON
    assert scrub(f"openai says {KEY}!") == "openai says [REDACTED]!"
    assert scrub("Authorization: Bearer abcdefgh12345678") == "Authorization: Bearer [REDACTED]"
    assert scrub("redis://:hunter22@redis:6379/0") == "redis://:[REDACTED]@redis:6379/0"
    assert scrub("postgresql+psycopg://u:pw@db/x") == "postgresql+psycopg://u:[REDACTED]@db/x"
    assert scrub("redis://127.0.0.1:6379/0 and sk-short") == "redis://127.0.0.1:6379/0 and sk-short"


def test_secrets_are_collected_only_when_json_logs_or_traces_need_them():
    env = {
        "OPENAI_API_KEY": KEY,
        "ANTHROPIC_API_KEY": "an-anthropic-secret-value",
        "MY_SERVICE_TOKEN": "tok-123456789",
        "STEPWISE_API_TOKENS": "alice=0123456789abcdef",
        "SHORT_KEY": "abc",
        "STEPWISE_AGENTS": "tests.agents",
    }

    assert Settings.from_env(env).secrets == ()
    found = Settings.from_env({**env, "STEPWISE_LOG_FORMAT": "json"}).secrets
    assert set(found) == {KEY, "an-anthropic-secret-value", "tok-123456789", "0123456789abcdef"}
    assert KEY not in repr(Settings.from_env({**env, "STEPWISE_LOG_FORMAT": "json"}))


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("tests.leaky", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_tasks_ids_plain_extras_only_and_no_secret():
    logs = CeleryJsonLogs(Scrubber([KEY]))
    formatter = logs.formatter()
    task = SimpleNamespace(
        name="stepwise.tool_step", request=SimpleNamespace(id="t-1", args=[RUN, 2], kwargs={})
    )

    logs.on_prerun(task=task)
    try:
        during = json.loads(
            formatter.format(record("key %s", KEY, data={"kwargs": "{'input': 'my prompt'}"}, n=3))
        )
    finally:
        logs.on_postrun()
    after = json.loads(formatter.format(record("after")))

    assert list(during)[:4] == ["time", "level", "logger", "message"]
    assert during["message"] == "key [REDACTED]"
    assert during["level"] == "WARNING" and during["logger"] == "tests.leaky"
    assert (during["task_name"], during["task_id"]) == ("stepwise.tool_step", "t-1")
    assert (during["run_id"], during["step"]) == (RUN, 2)
    assert during["n"] == 3 and "data" not in during  # Celery's extras carry the arguments
    assert "run_id" not in after and "task_id" not in after


def test_a_received_task_line_names_the_task_and_a_traceback_is_one_field():
    formatter = JsonLines(Scrubber([KEY]))
    received = record("Task %(name)s[%(id)s] received", {"name": "stepwise.start_run", "id": "i"})
    try:
        raise RuntimeError(f"rejected {KEY}")
    except RuntimeError:
        failed = record("tool raised")
        failed.exc_info = sys.exc_info()

    line = json.loads(formatter.format(received))
    crash = formatter.format(failed)

    assert line["message"] == "Task stepwise.start_run[i] received"
    assert (line["task_name"], line["task_id"]) == ("stepwise.start_run", "i")
    assert "\n" not in crash and KEY not in crash
    assert "RuntimeError: rejected [REDACTED]" in json.loads(crash)["exc_info"]


def test_celerys_handlers_get_the_json_formatter_and_the_banner_becomes_a_record():
    logs = CeleryJsonLogs(Scrubber())
    logger = logging.getLogger("tests.unit.json")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    worker = SimpleNamespace(quiet=False, startup_info=lambda artlines: "[config]\n.> app: x")
    try:
        logs.on_logger(logger=logger)
        logs.on_init(instance=worker)
    finally:
        logger.removeHandler(handler)

    assert isinstance(handler.formatter, JsonLines)
    assert worker.quiet is True


def test_an_observer_that_raises_is_logged_and_the_others_still_hear(caplog):
    heard: list[str] = []
    observers = Observers()

    def broken(store: Any, payload: dict[str, Any]) -> None:
        raise RuntimeError("broken")

    observers.add(broken)
    observers.add(lambda store, payload: heard.append(payload["type"]))
    observers.add(broken)  # once is enough
    with caplog.at_level(logging.ERROR, logger="storage.store"):
        observers.notify(None, {"type": "run.started"})  # type: ignore[arg-type]
    observers.remove(broken)
    observers.notify(None, {"type": "run.succeeded"})  # type: ignore[arg-type]

    assert heard == ["run.started", "run.succeeded"]
    assert caplog.text.count("event observer") == 1
