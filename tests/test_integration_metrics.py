"""Real workers serve Prometheus metrics: a thread-pool worker for runs and model calls,
a prefork worker (multiprocess mode) for tools. The test scrapes both after real runs.

The workers import this module as an agents module (STEPWISE_AGENTS), for `flaky`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks import Agent, client
from tests import fake_openai as wire
from tests.fake_openai import FakeOpenAI
from tests.test_integration_support import free_port, query, start_worker, wait_until

# Not from tests.conftest: a worker imports this module, and must not import that one.
ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-metrics-not-a-real-key"
AGENTS = "tests.agents,tests.test_integration_support,tests.test_integration_metrics"
# A dollar a token, so the costs are easy to check; "scripted:*" stays free.
PRICES = """
[models."scripted:parallel"]
input = 1000000.0
output = 2000000.0

[models."openai:fake-model"]
input = 1000000.0
cached_input = 500000.0
output = 2000000.0
"""

flaky = Agent(
    name="flaky",
    instructions="Answer briefly.",
    model="openai:fake-model",
    model_settings={"timeout": 30},
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample the worker serves, by name and labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def test_workers_serve_runs_steps_tokens_cost_retries_and_queue_wait_by_label(
    worker: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    server: FakeOpenAI,
    database_url: str,
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    monkeypatch.setattr("tests.test_integration_support.AGENTS", AGENTS)
    for name, setting in (("OPENAI_BASE_URL", server.url), ("OPENAI_API_KEY", API_KEY)):
        monkeypatch.setenv(name, setting)
    shared = {
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": API_KEY,
        "STEPWISE_PRICES": str(prices),
        "STEPWISE_METRICS_ADDR": "127.0.0.1",
    }
    models_port, tools_port = free_port(), free_port()
    start_worker(
        worker,
        monkeypatch,
        tmp_path,
        {**shared, "STEPWISE_METRICS_PORT": str(models_port)},
        queues="celery,stepwise.model",
    )
    start_worker(
        worker,
        monkeypatch,
        tmp_path,
        {
            **shared,
            "STEPWISE_METRICS_PORT": str(tools_port),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        },
        queues="stepwise.tools",
        pool="prefork",
        concurrency=2,
    )
    server.reply(
        wire.error(429, "Rate limit reached for requests", headers={"retry-after": "0"}),
        wire.Stream(wire.text_deltas("Paris."), usage=wire.token_usage(40, 8, cached=16)),
    )

    runs = {name: client.start_run(name, "Go.") for name in ("parallel", "looper", "flaky")}
    ended = {name: client.wait(run_id, timeout=60) for name, run_id in runs.items()}

    statuses = {name: run.status for name, run in ended.items()}
    assert statuses == {"parallel": "succeeded", "looper": "failed", "flaky": "succeeded"}, {
        name: run.error for name, run in ended.items()
    }
    # A run's terminal event is counted just after its commit: wait for the last count.
    models = wait_until(
        "the model worker to count every run",
        lambda: (
            (s := scrape(models_port))
            and sum(v for (n, _), v in s.items() if n == "stepwise_runs_finished_total") == 3
            and s
        ),
    )
    tools = scrape(tools_port)

    finished = "stepwise_runs_finished_total"
    assert value(models, finished, agent="parallel", status="succeeded") == 1
    assert value(models, finished, agent="looper", status="failed") == 1
    assert value(models, finished, agent="flaky", status="succeeded") == 1
    for name in runs:
        assert value(models, "stepwise_runs_started_total", agent=name) == 1

    steps = "stepwise_step_duration_seconds_count"
    assert value(models, steps, kind="model", outcome="succeeded") == 2 + 3 + 1
    assert value(models, steps, kind="model", outcome="retried") == 1
    assert (
        value(
            models,
            "stepwise_step_duration_seconds_bucket",
            kind="model",
            outcome="succeeded",
            le="+Inf",
        )
        == 6
    )
    # The prefork worker's children ran the tools; its main process serves their sum.
    assert value(tools, steps, kind="tool", outcome="succeeded") == 2 + 2
    assert value(models, steps, kind="tool", outcome="succeeded") is None

    calls = "stepwise_model_calls_total"
    assert value(models, calls, model="scripted:parallel", finish_reason="tool_calls") == 1
    assert value(models, calls, model="scripted:parallel", finish_reason="stop") == 1
    assert value(models, calls, model="scripted:looper", finish_reason="tool_calls") == 3
    assert value(models, calls, model="openai:fake-model", finish_reason="stop") == 1
    tokens = "stepwise_model_tokens_total"
    for name, run_id in runs.items():
        model = "openai:fake-model" if name == "flaky" else f"scripted:{name}"
        usage = query(database_url, "SELECT usage FROM stepwise_runs WHERE id = %s", run_id)[0][0]
        assert value(models, tokens, model=model, type="input") == usage["input_tokens"]
        assert value(models, tokens, model=model, type="output") == usage["output_tokens"]
    assert value(models, tokens, model="openai:fake-model", type="cached_input") == 16
    cost = "stepwise_model_cost_usd_total"
    [(paid,)] = query(
        database_url, "SELECT cost_usd FROM stepwise_runs WHERE id = %s", runs["parallel"]
    )
    assert value(models, cost, model="scripted:parallel") == pytest.approx(paid)
    assert value(models, cost, model="openai:fake-model") == pytest.approx(24 + 16 * 0.5 + 8 * 2)
    assert value(models, cost, model="scripted:looper") == 0

    retries = "stepwise_task_retries_total"
    assert value(models, retries, task="stepwise.model_step", error="Retryable") == 1
    wait = "stepwise_queue_wait_seconds_count"
    assert value(models, wait, task="stepwise.start_run", queue="celery") == 3
    assert value(models, wait, task="stepwise.model_step", queue="stepwise.model") == 6 + 1
    assert value(models, wait, task="stepwise.finish_run", queue="celery") is None  # not sent
    assert value(tools, wait, task="stepwise.tool_step", queue="stepwise.tools") == 4


def test_a_prefork_worker_asked_for_metrics_without_a_multiprocess_dir_refuses_to_start(
    distributed: dict[str, str],
) -> None:
    env = {
        **os.environ,
        **distributed,
        "PYTHONPATH": str(ROOT),
        "STEPWISE_METRICS_PORT": str(free_port()),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "prefork", "-c", "1"]

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode != 0
    assert "needs PROMETHEUS_MULTIPROC_DIR" in done.stdout + done.stderr
