"""Scheduled runs through real `celery beat` processes and real workers.

Each test writes its own module with one `Schedule` (so no other test's beat
fires it), points a worker and one or two beats at it, and reads the ticks and
runs back from Postgres. Gated agents hold their run at a gate the test opens.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from storage import TERMINAL
from tasks.cli import cli
from tasks.schedules import ENTRY_PREFIX
from tests.conftest import ROOT, stop_beat
from tests.test_integration_support import AGENTS, query, start_worker, wait_for_event, wait_until


def schedule_module(monkeypatch: pytest.MonkeyPatch, folder: Path, line: str) -> dict[str, str]:
    """Write a module holding one schedule; the environment that loads it, here and in children."""
    name = f"schedules_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(f"from tasks.schedules import Schedule\n\nplan = {line}\n")
    monkeypatch.syspath_prepend(str(folder))
    return {"STEPWISE_AGENTS": f"{AGENTS},{name}", "PYTHONPATH": f"{ROOT}:{folder}"}


def prepare(worker: Any, monkeypatch: pytest.MonkeyPatch, gates: Path, line: str) -> dict[str, str]:
    """A worker that knows the schedule in `line`; the environment a beat needs for it."""
    env = schedule_module(monkeypatch, gates, line)
    start_worker(worker, monkeypatch, gates, extra_env=env)
    monkeypatch.setenv("STEPWISE_AGENTS", env["STEPWISE_AGENTS"])
    return env


def ticks(database_url: str, name: str) -> list[tuple[Any, ...]]:
    """(tick, outcome, run id, run status, started, finished) per tick, oldest first."""
    return query(
        database_url,
        "SELECT t.tick, t.outcome, r.id, r.status, r.started_at, r.finished_at "
        "FROM stepwise_schedule_ticks t LEFT JOIN stepwise_runs r ON r.id = t.run_id "
        "WHERE t.schedule = %s ORDER BY t.tick",
        name,
    )


def started(database_url: str, name: str) -> list[tuple[Any, ...]]:
    """The ticks that recorded a run."""
    return [t for t in ticks(database_url, name) if t[2] is not None]


def settle(database_url: str, name: str, gates: Path) -> list[tuple[Any, ...]]:
    """Open every run's gate, wait until every run has ended; the ticks that recorded one."""

    def ended() -> bool:
        found = started(database_url, name)
        for t in found:
            (gates / f"{t[2]}.open").touch()
        return all(t[3] in TERMINAL for t in found)

    wait_until("every scheduled run to end", ended, within=60)
    return started(database_url, name)


def sent(gates: Path, name: str, beat_number: int) -> int:
    """How many times beat number `beat_number` sent the schedule's tick."""
    log = (gates / f"beat-{beat_number}.log").read_text(errors="replace")
    return log.count(f"Sending due task {ENTRY_PREFIX}{name} ")


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def test_two_beats_with_a_one_second_schedule_start_one_run_per_tick(
    worker: Any, beat: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    name = unique("each-second")
    env = prepare(
        worker, monkeypatch, tmp_path,
        f'Schedule({name!r}, agent="demo", input="What is 2 + 3?", every=1)',
    )  # fmt: skip
    first, second = beat(**env), beat(**env)  # one too many, by mistake

    wait_until("four ticks", lambda: len(started(database_url, name)) >= 4, within=60)
    stop_beat(first)
    stop_beat(second)
    found = settle(database_url, name, tmp_path)

    run_ids = [t[2] for t in found]
    assert len(set(run_ids)) == len(found)
    assert all(t[3] == "succeeded" for t in found)
    runs_of_schedule = query(
        database_url,
        "SELECT count(*) FROM stepwise_runs WHERE metadata->>'schedule' = %s",
        name,
    )[0][0]
    assert runs_of_schedule == len(found)
    # Both beats sent every tick they saw; the second copy of a tick started nothing.
    assert sent(tmp_path, name, 0) >= 2 and sent(tmp_path, name, 1) >= 2
    assert sent(tmp_path, name, 0) + sent(tmp_path, name, 1) > len(ticks(database_url, name))
    assert all(t[0].microsecond == 0 for t in found)  # a tick is the start of its second


def test_a_skip_schedule_starts_nothing_while_its_last_run_is_unfinished(
    worker: Any, beat: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    name = unique("skipping")
    env = prepare(
        worker, monkeypatch, tmp_path,
        f'Schedule({name!r}, agent="gated", input="wait", every=1, overlap="skip")',
    )  # fmt: skip
    ticking = beat(**env)

    wait_until(
        "two skipped ticks",
        lambda: [t[1] for t in ticks(database_url, name)].count("skipped") >= 2,
        within=60,
    )
    [held] = started(database_url, name)
    (tmp_path / f"{held[2]}.open").touch()
    wait_until("a second run", lambda: len(started(database_url, name)) >= 2, within=60)
    stop_beat(ticking)
    found = settle(database_url, name, tmp_path)

    assert all(t[3] == "succeeded" for t in found)
    for earlier, later in itertools.pairwise(found):
        assert earlier[5] <= later[4], "two runs of a skip schedule overlapped"
    skipped = [t for t in ticks(database_url, name) if t[1] == "skipped"]
    assert len(skipped) >= 2 and all(t[2] is None for t in skipped)


def test_a_queue_schedule_runs_its_runs_one_after_another_in_tick_order(
    worker: Any, beat: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    name = unique("queueing")
    env = prepare(
        worker, monkeypatch, tmp_path,
        f'Schedule({name!r}, agent="gated", input="wait", every=1, overlap="queue")',
    )  # fmt: skip
    ticking = beat(**env)
    wait_until("three runs", lambda: len(started(database_url, name)) >= 3, within=60)
    stop_beat(ticking)
    found = started(database_url, name)
    # The second run waits longer than Celery's default of three retries.
    second = found[1][2]
    wait_until("the second run to look five times", lambda: _waits(tmp_path, second) >= 5)

    assert [t[1] for t in found] == ["started"] + ["queued"] * (len(found) - 1)
    for position, (_, _, run_id, *_) in enumerate(found):
        wait_for_event(database_url, run_id, "tool.started", step=2)
        later = [t[3] for t in started(database_url, name)[position + 1 :]]
        assert later == ["queued"] * len(later), "a queued run started before its turn"
        (tmp_path / f"{run_id}.open").touch()
        wait_until("the run to end", lambda r=run_id: _status(database_url, r) in TERMINAL)

    found = started(database_url, name)
    assert all(t[3] == "succeeded" for t in found)
    for earlier, later_run in itertools.pairwise(found):
        assert earlier[5] <= later_run[4]


def test_a_cancel_previous_schedule_cancels_the_unfinished_run_and_starts_at_once(
    worker: Any, beat: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    name = unique("replacing")
    env = prepare(
        worker, monkeypatch, tmp_path,
        f'Schedule({name!r}, agent="gated", input="wait", every=1, overlap="cancel_previous")',
    )  # fmt: skip
    ticking = beat(**env)
    wait_until("two runs under way", lambda: _under_way(database_url, name) >= 2, within=60)
    stop_beat(ticking)
    found = settle(database_url, name, tmp_path)

    *replaced, last = found
    assert last[3] == "succeeded"
    assert [t[3] for t in replaced] == ["cancelled"] * len(replaced)
    assert found[1][4] < found[0][5], "the next run waited for the cancelled one to end"


def test_redbeat_as_two_beats_sends_each_tick_from_one_of_them(
    worker: Any, beat: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    name = unique("redbeat")
    env = prepare(
        worker, monkeypatch, tmp_path,
        f'Schedule({name!r}, agent="demo", input="What is 2 + 3?", every=1)',
    )  # fmt: skip
    first = beat("redbeat.RedBeatScheduler", **env)
    second = beat("redbeat.RedBeatScheduler", **env)

    wait_until("three ticks", lambda: len(started(database_url, name)) >= 3, within=60)
    stop_beat(first)
    stop_beat(second)
    found = settle(database_url, name, tmp_path)

    assert all(t[3] == "succeeded" for t in found)
    assert sorted([sent(tmp_path, name, 0), sent(tmp_path, name, 1)])[0] == 0  # one holds the lock
    assert len(ticks(database_url, name)) == len(found)


def test_the_schedules_command_lists_each_schedule_with_its_last_run(
    worker: Any, beat: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    name = unique("listed")
    env = prepare(
        worker, monkeypatch, tmp_path,
        f'Schedule({name!r}, agent="demo", input="What is 2 + 3?", every=1, owner="ops")',
    )  # fmt: skip
    ticking = beat(**env)
    wait_until("a run", lambda: len(started(database_url, name)) >= 1, within=60)
    stop_beat(ticking)
    [*_, last] = settle(database_url, name, tmp_path)

    listed = CliRunner().invoke(cli, ["schedules"])

    assert listed.exit_code == 0, listed.output
    [line] = [x for x in listed.output.splitlines() if x.startswith(name)]
    assert "every 1 s" in line and "skip" in line and "next " in line
    assert line.endswith(f"last {last[2]} succeeded")


def _status(database_url: str, run_id: str) -> str:
    rows = query(database_url, "SELECT status FROM stepwise_runs WHERE id = %s", run_id)
    return str(rows[0][0])


def _waits(logs: Path, run_id: str) -> int:
    """How often the worker logged that the run waits for an earlier one."""
    text = "".join(p.read_text(errors="replace") for p in logs.glob("w*.log"))
    return text.count(f"Waiting('run {run_id} waits for run ")


def _under_way(database_url: str, name: str) -> int:
    """How many of the schedule's runs have reached their gate."""
    return sum(
        bool(
            query(
                database_url,
                "SELECT 1 FROM stepwise_events WHERE run_id = %s AND type = 'tool.started'",
                t[2],
            )
        )
        for t in started(database_url, name)
    )
