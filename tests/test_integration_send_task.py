"""Another application starts runs by task name with nothing but celery installed; bad
messages are refused with a logged reason and write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks import app, client
from tests.conftest import KEY_PREFIX, REDIS_URL
from tests.test_integration_support import query, wait_for_task, wait_until

# What a caller that knows only Celery writes: no import of this project anywhere.
CALLER = textwrap.dedent(
    """
    import importlib.util, json, sys, uuid

    from celery import Celery

    OURS = ("tasks", "providers", "storage", "celeryconfig")

    def unreachable():
        for name in OURS:
            assert name not in sys.modules, f"{name} was imported"
            assert importlib.util.find_spec(name) is None, f"{name} is importable"

    unreachable()
    broker, prefix = sys.argv[1], sys.argv[2]
    app = Celery("caller", broker=broker)
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    run_id = str(uuid.uuid4())
    app.send_task(
        "stepwise.start_run",
        kwargs={"agent": "parallel", "input": "add things from afar", "run_id": run_id},
    )
    unreachable()
    print(json.dumps({"run_id": run_id}))
    """
)

TABLES = (
    "stepwise_runs",
    "stepwise_events",
    "stepwise_steps",
    "stepwise_threads",
    "stepwise_messages",
)


@pytest.fixture(scope="session")
def celery_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with only `celery[redis]` in it; its python."""
    venv = tmp_path_factory.mktemp("celery-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "celery[redis]==5.7.*"], check=True, capture_output=True, timeout=120)
    return venv / "bin" / "python"


def _outside_env() -> dict[str, str]:
    """The caller's environment with nothing that points at this project."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STEPWISE_", "CELERY_", "PYTHON", "VIRTUAL_ENV"))
    }


def test_an_app_with_only_celery_installed_starts_a_run_by_task_name(
    celery_only_python: Path, worker: Any, database_url: str, tmp_path: Path
) -> None:
    worker()
    script = tmp_path / "caller.py"
    script.write_text(CALLER)

    done = subprocess.run(
        [str(celery_only_python), str(script), REDIS_URL, KEY_PREFIX],
        cwd=tmp_path,
        env=_outside_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
    # The worker records the run when it takes the message: until then there is none.
    wait_until(
        f"run {run_id} recorded",
        lambda: query(database_url, "SELECT 1 FROM stepwise_runs WHERE id = %s", run_id),
    )
    run = client.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.result == "1+2 and 3+4 are done"
    assert run.input == "add things from afar"
    # Recorded and started in one transaction: one transaction id on both events' rows.
    writers = query(
        database_url,
        "SELECT type, xmin::text FROM stepwise_events WHERE run_id = %s AND seq <= 2 ORDER BY seq",
        run_id,
    )
    assert [kind for kind, _ in writers] == ["run.queued", "run.started"]
    assert writers[0][1] == writers[1][1]


def test_the_same_start_message_twice_starts_the_run_once(worker: Any, database_url: str) -> None:
    worker()
    message = {"run_id": str(uuid.uuid4()), "agent": "parallel", "input": "add things twice"}

    for _ in range(2):
        app.send_task("stepwise.start_run", kwargs=message, queue="celery")
    wait_until(
        "the run recorded",
        lambda: query(database_url, "SELECT 1 FROM stepwise_runs WHERE id = %s", message["run_id"]),
    )
    run = client.wait(message["run_id"], timeout=30)

    assert run.status == "succeeded", run.error
    log = query(
        database_url, "SELECT type FROM stepwise_events WHERE run_id = %s", message["run_id"]
    )
    assert [kind for (kind,) in log].count("run.started") == 1
    steps = query(
        database_url,
        "SELECT count(*) FROM stepwise_steps WHERE run_id = %s AND number = 1",
        message["run_id"],
    )
    assert steps == [(1,)]


def _counts(database_url: str) -> dict[str, int]:
    return {t: query(database_url, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


BAD_MESSAGES = {
    "unknown agent": (
        {"agent": "nobody", "input": "hello"},
        "unknown agent 'nobody'",
    ),
    "empty input": (
        {"agent": "parallel", "input": "   "},
        "input must be a non-empty string",
    ),
    "non-string input": (
        {"agent": "parallel", "input": ["add", "things"]},
        "input must be a non-empty string",
    ),
    "input over the limit": (
        {"agent": "parallel", "input": "x" * 41},
        "input is 41 characters; the limit is 40 (STEPWISE_MAX_INPUT_CHARS)",
    ),
    "non-UUID run id": (
        {"agent": "parallel", "input": "hello", "run_id": "run-42"},
        "run_id must be a UUID string, got 'run-42'",
    ),
    "unexpected argument": (
        {"agent": "parallel", "input": "hello", "priority": "high"},
        "stepwise.start_run got unexpected arguments: ['priority']",
    ),
    "a run id nobody recorded": (
        {"run_id": "0b5f6a2e-52a4-4d1e-9d61-0c1e51c0a6a1"},
        "no run with id '0b5f6a2e-52a4-4d1e-9d61-0c1e51c0a6a1'",
    ),
}


def test_malformed_start_messages_write_nothing_and_the_worker_logs_each_reason(
    worker: Any, database_url: str
) -> None:
    # Only the `celery` queue: a leftover step message of another test cannot
    # write anything while the counts are compared.
    w = worker(queues="celery", extra_env={"STEPWISE_MAX_INPUT_CHARS": "40"})
    before = _counts(database_url)

    sent = {
        case: app.send_task("stepwise.start_run", kwargs=kwargs)
        for case, (kwargs, _) in BAD_MESSAGES.items()
    }
    logged = {case: wait_for_task(w, result.id) for case, result in sent.items()}

    assert _counts(database_url) == before
    for case, (_, reason) in BAD_MESSAGES.items():
        assert " raised " in logged[case], f"{case}: {logged[case]}"
        assert reason in logged[case], f"{case}: {logged[case]}"
        result = sent[case]
        assert result.get(timeout=10, propagate=False) is not None
        assert result.failed(), case
        assert reason in str(result.result), case
