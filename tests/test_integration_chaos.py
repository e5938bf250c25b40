"""Chaos: SIGKILLed workers and random cancels lose nothing and repeat nothing.

Twenty runs of an agent whose tool adds one to a counter in Postgres keyed by its
effect id. A killer SIGKILLs the worker at random moments (during model calls,
during tools, between steps) and starts a new one each time; beat runs the
watchdog every second. Then: every run is terminal, every event log is 1..n with
the terminal event last, and every counter is exactly 1, or 0 or 1 for a call
marked outcome_unknown: never 2. The figures go to the test's output (`-s`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from celery import Celery

from tasks import client, runs
from tasks.runtime import current_runtime
from tests.test_integration_support import query, start_worker, wait_until

if TYPE_CHECKING:
    from tests.instances import PostgresInstance, RedisInstance

pytest_plugins = ["tests.instances"]

RUNS = 20
KILLS = 6
SEED = 20261121
CHAOS_ENV = {
    # Redelivery within seconds (the visibility-timeout rule is broken on purpose).
    "STEPWISE_VISIBILITY_TIMEOUT": "2",
    "STEPWISE_TIMING_CHECK": "warn",
    "STEPWISE_WATCHDOG_GRACE": "2",
}


def make_counters(database_url: str) -> str:
    """The table `bump` counts in, empty."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS chaos_effects (effect_id text PRIMARY KEY, runs int)"
        )
        db.execute("TRUNCATE chaos_effects")
    return database_url


@pytest.fixture
def counters(database_url: str) -> str:
    return make_counters(database_url)


def watchdog_beat(beat: Callable[..., Any], **env: str) -> None:
    """A real beat sending the watchdog every second, with the chaos settings."""
    beat(**CHAOS_ENV, STEPWISE_WATCHDOG_INTERVAL="1", **env)


def _event_logs(database_url: str, run_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
    rows = query(
        database_url,
        "SELECT run_id, seq, type FROM stepwise_events WHERE run_id = ANY(%s) ORDER BY run_id, seq",
        run_ids,
    )
    logs: dict[str, list[tuple[int, str]]] = {r: [] for r in run_ids}
    for run_id, seq, kind in rows:
        logs[run_id].append((seq, kind))
    return logs


def _stuck(database_url: str, run_ids: list[str], logs: Path) -> str:
    """What a failed settle leaves to read: each unfinished run's last events, every log's end."""
    lines = ["some runs never ended:"]
    for run_id, log in _event_logs(database_url, run_ids).items():
        run = client.get_run(run_id)
        if not run.done:
            lines.append(f"  {run_id} {run.status}: ... {[kind for _, kind in log[-6:]]}")
    for path in sorted(logs.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-40:]
        lines += [f"--- the end of {path.name}:", *tail]
    return "\n".join(lines)


def _started(database_url: str, run_ids: list[str]) -> int:
    """How many of the runs have stored a model call."""
    rows = query(
        database_url,
        "SELECT count(DISTINCT run_id) FROM stepwise_events "
        "WHERE run_id = ANY(%s) AND type = 'model.started'",
        run_ids,
    )
    return int(rows[0][0])


def _gaps(log: list[tuple[int, str]]) -> int:
    """Numbers missing from 1..n, plus terminal events that are not the one last event."""
    seqs = [seq for seq, _ in log]
    terminal = [i for i, (_, kind) in enumerate(log) if kind in TERMINAL_EVENTS]
    misplaced = 0 if terminal == [len(log) - 1] else 1
    return len(set(range(1, len(log) + 1)) - set(seqs)) + misplaced


TERMINAL_EVENTS = {"run.succeeded", "run.failed", "run.cancelled", "run.timed_out"}


def test_twenty_runs_through_six_random_sigkills_end_terminal_with_every_effect_at_most_once(
    worker: Any,
    counters: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    beat: Callable[..., Any],
) -> None:
    chance = random.Random(SEED)
    watchdog_beat(beat)
    current = start_worker(worker, monkeypatch, tmp_path, extra_env=CHAOS_ENV, concurrency=4)
    run_ids = [client.start_run("chaotic", f"bump {i}") for i in range(RUNS)]
    for _ in range(KILLS):
        time.sleep(chance.uniform(0.3, 1.5))
        current.kill()
        current = start_worker(worker, monkeypatch, tmp_path, extra_env=CHAOS_ENV, concurrency=4)

    figures = settle_and_check(counters, run_ids, tmp_path)

    assert all(client.get_run(r).status == "succeeded" for r in run_ids)
    print(f"\nchaos: {RUNS} runs, {KILLS} SIGKILLs (seed {SEED}): {figures}")


def settle_and_check(database_url: str, run_ids: list[str], logs: Path) -> str:
    """Wait for every run to end, check the guarantees, and say what happened."""

    def all_ended() -> bool:
        return all(client.get_run(r).done for r in run_ids)

    try:
        wait_until("every run to end", all_ended, within=180)
    except pytest.fail.Exception:
        pytest.fail(_stuck(database_url, run_ids, logs))

    statuses = Counter(client.get_run(r).status for r in run_ids)
    logs = _event_logs(database_url, run_ids)
    gaps = sum(_gaps(log) for log in logs.values())
    steps = query(
        database_url,
        "SELECT s.run_id, s.number, s.effect_id, s.attempts, s.output, coalesce(e.runs, 0) "
        "FROM stepwise_steps s LEFT JOIN chaos_effects e ON e.effect_id = s.effect_id "
        "WHERE s.run_id = ANY(%s) AND s.kind = 'tool'",
        run_ids,
    )
    unknown = [s for s in steps if s[4] and s[4].get("outcome_unknown")]
    known = [s for s in steps if not (s[4] and s[4].get("outcome_unknown"))]
    duplicates = sum(1 for *_, runs in steps if runs > 1)
    strays = query(
        database_url,
        "SELECT count(*) FROM chaos_effects WHERE effect_id NOT IN "
        "(SELECT effect_id FROM stepwise_steps WHERE effect_id IS NOT NULL)",
    )[0][0]
    resumed = sum(kind == "run.resumed" for log in logs.values() for _, kind in log)
    again = sum(1 for s in steps if s[3] > 1)

    assert sum(statuses.values()) == len(run_ids)
    assert gaps == 0
    assert duplicates == 0
    assert strays == 0
    assert all(runs == 1 for *_, output, runs in known if output and not output["is_error"])
    assert all(runs in (0, 1) for *_, runs in unknown)
    return (
        f"statuses {dict(statuses)}; {len(steps)} tool calls, {len(unknown)} outcome_unknown, "
        f"{again} claimed twice, {duplicates} run twice; {gaps} gaps in "
        f"{sum(len(x) for x in logs.values())} events; {resumed} watchdog resumes"
    )


def test_runs_cancelled_at_random_moments_start_no_step_after_the_cancel(
    worker: Any, counters: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chance = random.Random(SEED + 1)
    start_worker(worker, monkeypatch, tmp_path, concurrency=4)
    run_ids = [client.start_run("chaotic", f"bump {i}") for i in range(10)]
    cancellers = []
    for run_id in run_ids:
        delay = chance.uniform(0, 1.2)
        cancellers.append(threading.Timer(delay, client.cancel, args=(run_id,)))
    for timer in cancellers:
        timer.start()
    for timer in cancellers:
        timer.join()

    runs = [client.wait(r, timeout=60) for r in run_ids]

    logs = _event_logs(counters, run_ids)
    for run, (run_id, log) in zip(runs, logs.items(), strict=True):
        assert _gaps(log) == 0, log
        kinds = [kind for _, kind in log]
        if "run.cancel_requested" in kinds or kinds[-1] == "run.cancelled":
            assert run.status == "cancelled", (run_id, kinds)
            after = kinds[kinds.index(kinds[-1]) :]
            if "run.cancel_requested" in kinds:
                after = kinds[kinds.index("run.cancel_requested") :]
            assert not {"model.started", "tool.started"} & set(after), kinds
        else:
            assert run.status == "succeeded", (run_id, kinds)  # it ended before the cancel
    print(f"\ncancels: {Counter(r.status for r in runs)}")


def test_runs_finish_after_their_redis_restarts_mid_run_and_forgets_every_message(
    private_redis: RedisInstance,  # first: it outlives the worker and beat that use it
    worker: Any,
    counters: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    beat: Callable[..., Any],
) -> None:
    own = {
        "CELERY_BROKER_URL": private_redis.url,
        "CELERY_RESULT_BACKEND": private_redis.url,
        "STEPWISE_REDIS_URL": private_redis.url,
        "STEPWISE_REDIS_KEY_PREFIX": "",
    }
    watchdog_beat(beat, **own)
    start_worker(worker, monkeypatch, tmp_path, extra_env={**CHAOS_ENV, **own}, concurrency=4)
    for key, value in own.items():  # Celery reads CELERY_BROKER_URL before its `broker`
        monkeypatch.setenv(key, value)
    # This process's Celery app talks to the shared Redis: send by name, as any app can.
    sender = Celery(broker=private_redis.url)
    rt = current_runtime()
    run_ids = [runs.accept(rt, agent="chaotic", input=f"bump {i}")[0] for i in range(8)]
    for run_id in run_ids:
        sender.send_task("stepwise.start_run", kwargs={"run_id": run_id})
    seen: list[dict[str, Any]] = []
    follower = threading.Thread(target=lambda: seen.extend(client.follow(run_ids[-1], timeout=120)))
    follower.start()

    wait_until("some runs under way", lambda: _started(counters, run_ids) >= 3)
    private_redis.restart(down_for=1.0)  # it keeps nothing on disk: every message is gone
    figures = settle_and_check(counters, run_ids, tmp_path)
    follower.join(30)

    print(f"\nredis restart: 8 runs: {figures}")
    assert all(client.get_run(r).status == "succeeded" for r in run_ids)
    # The follower lost its subscription with Redis and went on from the database.
    stored = [e["seq"] for e in seen if e["seq"] is not None]
    assert stored == list(range(1, len(stored) + 1))
    assert seen[-1]["type"] == "run.succeeded"


def test_runs_end_after_their_postgres_restarts_mid_run(
    private_postgres: PostgresInstance,  # first: it outlives the worker and beat that use it
    worker: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    beat: Callable[..., Any],
) -> None:
    own = {"STEPWISE_DATABASE_URL": private_postgres.url}
    monkeypatch.setenv("STEPWISE_DATABASE_URL", private_postgres.url)
    make_counters(private_postgres.url)
    watchdog_beat(beat, **own)
    start_worker(worker, monkeypatch, tmp_path, extra_env={**CHAOS_ENV, **own}, concurrency=4)
    run_ids = [client.start_run("chaotic", f"bump {i}") for i in range(8)]

    time.sleep(0.8)
    private_postgres.restart(down_for=2.0)  # connections break mid-step, new ones are refused
    figures = settle_and_check(private_postgres.url, run_ids, tmp_path)

    print(f"\npostgres restart: 8 runs: {figures}")
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.status == "succeeded" or run.error, run  # finished, or failed with a reason
