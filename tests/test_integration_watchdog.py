"""The watchdog: no run stays queued or running for ever.

Some tests build a stalled run by hand and call `sweep` with a clock of their own;
the others lose real work (a worker SIGKILLed where nothing redelivers its message,
a start message deleted from Redis) and let the watchdog find it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlmodel import col, select
from typer.testing import CliRunner

from providers.types import Message
from storage import Run, Step
from storage.models import Event, utcnow
from tasks import client, runs, watchdog
from tasks.app import watchdog_dispatch
from tasks.cli import cli
from tasks.records import Next, append
from tasks.runtime import Runtime, current_runtime
from tests.conftest import KEY_PREFIX, REDIS_URL
from tests.test_integration_support import (
    events,
    start_worker,
    wait_for_event,
)

HOUR = timedelta(hours=1)


def _running(rt: Runtime, *, deadline_in: timedelta, quiet_for: timedelta) -> str:
    """A run that started, whose first model step is pending and whose last event is old."""
    run_id, _ = runs.accept(rt, agent="demo", input="What is 2 + 2?")
    now = utcnow()
    with rt.store.transaction() as tx:
        run = runs.locked_run(tx.db, run_id)
        tx.write(
            run,
            status="running",
            started_at=now - quiet_for,
            deadline_at=now + deadline_in,
            progressed_at=now - quiet_for,
        )
        append(tx.db, run, Message.text("user", run.input))
        tx.db.orm.add(Step(run_id=run_id, number=1, kind="model"))
    return run_id


def _types(rt: Runtime, run_id: str) -> list[str]:
    with rt.store.reading() as db:
        rows = db.exec(select(Event).where(Event.run_id == run_id).order_by(col(Event.seq)))
        return [e.type for e in rows]


def _run(rt: Runtime, run_id: str) -> Run:
    with rt.store.reading() as db:
        run = db.get(Run, run_id)
        assert run is not None
        return run


def test_a_running_run_past_its_deadline_with_nothing_in_flight_is_timed_out(
    embedded: dict[str, str],
) -> None:
    rt = current_runtime()
    run_id = _running(rt, deadline_in=-timedelta(seconds=1), quiet_for=timedelta(seconds=1))

    assert watchdog.sweep(rt, now=utcnow() + timedelta(seconds=rt.settings.watchdog_grace)) == []

    run = _run(rt, run_id)
    assert (run.status, run.error) == ("timed_out", "passed its deadline (found by the watchdog)")
    assert _types(rt, run_id)[-2:] == ["step.skipped", "run.timed_out"]


def test_a_quiet_run_with_a_cancel_request_and_nothing_in_flight_is_cancelled(
    embedded: dict[str, str],
) -> None:
    rt = current_runtime()
    run_id = _running(rt, deadline_in=HOUR, quiet_for=timedelta(seconds=1))
    with rt.store.transaction() as tx:
        runs.cancel(tx, run_id)  # its step waits out a retry countdown, say: nothing runs

    assert watchdog.sweep(rt, now=utcnow() + timedelta(seconds=rt.settings.watchdog_grace)) == []

    run = _run(rt, run_id)
    assert (run.status, run.error) == ("cancelled", "cancelled on request (ended by the watchdog)")
    assert _types(rt, run_id)[-3:] == ["run.cancel_requested", "step.skipped", "run.cancelled"]


def test_a_quiet_run_is_resumed_from_its_unfinished_step_and_the_resume_is_logged(
    embedded: dict[str, str],
) -> None:
    rt = current_runtime()
    run_id = _running(rt, deadline_in=HOUR, quiet_for=HOUR)

    [resumed] = watchdog.sweep(rt)

    assert resumed == watchdog.Resume(run_id, Next(model=1))
    assert _run(rt, run_id).resumes == 1
    assert _types(rt, run_id)[-1] == "run.resumed"
    assert watchdog.sweep(rt) == []  # the resume is progress: not quiet any more


def test_a_run_whose_step_holds_an_unexpired_lease_is_left_alone(
    embedded: dict[str, str],
) -> None:
    rt = current_runtime()
    run_id = _running(rt, deadline_in=-HOUR, quiet_for=HOUR)
    with rt.store.transaction() as tx:
        step = tx.db.orm.exec(select(Step).where(Step.run_id == run_id)).one()
        step.status, step.lease_until = "running", utcnow() + HOUR
        tx.db.orm.add(step)

    assert watchdog.sweep(rt) == []

    assert _run(rt, run_id).status == "running"


def test_a_run_that_stalls_again_after_max_resumes_fails_with_a_reason(
    embedded: dict[str, str],
) -> None:
    rt = current_runtime()
    run_id = _running(rt, deadline_in=HOUR, quiet_for=HOUR)
    with rt.store.transaction() as tx:
        run = runs.locked_run(tx.db, run_id)
        tx.write(run, resumes=rt.settings.watchdog_max_resumes)

    assert watchdog.sweep(rt) == []

    run = _run(rt, run_id)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.startswith("stalled: no progress for 3600 s after the watchdog resumed it 3")


def test_the_watchdog_starts_a_run_whose_start_message_was_lost(
    worker: Any, database_url: str
) -> None:
    run_id = client.start_run("demo", "What is 6 * 7?")  # no worker yet: it waits in Redis
    broker = redis.Redis.from_url(REDIS_URL)
    assert broker.delete(f"{KEY_PREFIX}celery") == 1  # as a Redis restart without disk would
    rt = current_runtime()

    # An hour on, every quiet run of the session's database is found: send this one's.
    [resumed] = [r for r in watchdog.sweep(rt, now=utcnow() + HOUR) if r.run_id == run_id]
    watchdog_dispatch(rt, resumed)
    worker()
    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    assert run.result == "6 * 7 = 42"
    kinds = [k for _, k, _ in events(database_url, run_id)]
    assert kinds[:3] == ["run.queued", "run.resumed", "run.started"]
    assert kinds.count("model.started") == 2  # two model steps, each called once


def test_beat_runs_the_watchdog_which_resumes_a_run_whose_worker_died_mid_tool(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, beat: Any
) -> None:
    beat(STEPWISE_WATCHDOG_INTERVAL="1")
    quick = {"STEPWISE_WATCHDOG_GRACE": "1"}
    doomed = start_worker(worker, monkeypatch, tmp_path, extra_env=quick)
    run_id = client.start_run("gated_briefly", "wait at the gate")
    wait_for_event(database_url, run_id, "tool.started", step=2)
    doomed.kill()  # its message stays unacknowledged for the whole visibility timeout

    start_worker(worker, monkeypatch, tmp_path, extra_env=quick)
    run = client.wait(run_id, timeout=60)

    assert run.status == "succeeded", run.error
    assert run.result == "resumed and done"
    kinds = [k for _, k, _ in events(database_url, run_id)]
    assert kinds.count("run.resumed") == 1
    assert kinds[kinds.index("run.resumed") + 1 :][:1] == ["tool.outcome_unknown"]


def test_the_watchdog_command_resumes_a_stalled_embedded_run_which_then_finishes(
    embedded: dict[str, str],
) -> None:
    rt = current_runtime()
    run_id = _running(rt, deadline_in=HOUR, quiet_for=HOUR)

    done = CliRunner().invoke(cli, ["watchdog"])

    assert done.exit_code == 0, done.output
    assert done.output == "resumed 1 run(s)\n"
    run = client.get_run(run_id)
    assert (run.status, run.result) == ("succeeded", "2 + 2 = 4")
    assert _types(rt, run_id)[:2] == ["run.queued", "run.resumed"]
