"""Scheduled runs through real `celery beat` processes and real workers.

Each test writes its own module with one `Schedule` (so no other test's beat
fires it), points a worker and one or two beats at it, and reads the ticks and
runs back from Postgres. Gated agents hold their run at a gate the test opens.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


@dataclass
class Plan:
    """One test's one-second schedule, a worker that knows it, and the beats sending it."""

    name: str
    env: dict[str, str]
    database_url: str
    gates: Path
    beat: Callable[..., Any]
    beats: list[Any] = field(default_factory=list)

    def send(self, count: int = 1, scheduler: str | None = None) -> None:
        """Start `count` beats (one too many is a mistake the ticks survive)."""
        self.beats += [self.beat(scheduler, **self.env) for _ in range(count)]

    def stop(self) -> None:
        for process in self.beats:
            stop_beat(process)

    def ticks(self) -> list[tuple[Any, ...]]:
        """(tick, outcome, run id, run status, started, finished) per tick, oldest first."""
        return query(
            self.database_url,
            "SELECT t.tick, t.outcome, r.id, r.status, r.started_at, r.finished_at "
            "FROM stepwise_schedule_ticks t LEFT JOIN stepwise_runs r ON r.id = t.run_id "
            "WHERE t.schedule = %s ORDER BY t.tick",
            self.name,
        )

    def started(self) -> list[tuple[Any, ...]]:
        """The ticks that recorded a run."""
        return [t for t in self.ticks() if t[2] is not None]

    def until(self, what: str, check: Callable[[], bool]) -> None:
        """Let the beats send until `check` holds, then stop them."""
        wait_until(what, check, within=60)
        self.stop()

    def settle(self) -> list[tuple[Any, ...]]:
        """Open every run's gate, wait until every run has ended; the ticks with a run."""

        def ended() -> bool:
            found = self.started()
            for t in found:
                (self.gates / f"{t[2]}.open").touch()
            return all(t[3] in TERMINAL for t in found)

        wait_until("every scheduled run to end", ended, within=60)
        return self.started()

    def sent(self, beat_number: int) -> int:
        """How many times beat number `beat_number` sent the schedule's tick."""
        log = (self.gates / f"beat-{beat_number}.log").read_text(errors="replace")
        return log.count(f"Sending due task {ENTRY_PREFIX}{self.name} ")


@pytest.fixture
def plan(
    worker: Any, beat: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> Iterator[Callable[..., Plan]]:
    """Declares a schedule `every=1` with the given fields and starts a worker that knows it."""
    made: list[Plan] = []

    def make(stem: str, **fields: str) -> Plan:
        name = f"{stem}-{uuid.uuid4().hex[:8]}"
        declared = {"agent": "demo", "input": "What is 2 + 3?", **fields}
        line = (
            f"Schedule({name!r}, every=1, "
            + ", ".join(f"{k}={v!r}" for k, v in declared.items())
            + ")"
        )
        env = schedule_module(monkeypatch, tmp_path, line)
        start_worker(worker, monkeypatch, tmp_path, extra_env=env)
        monkeypatch.setenv("STEPWISE_AGENTS", env["STEPWISE_AGENTS"])
        made.append(Plan(name, env, database_url, tmp_path, beat))
        return made[-1]

    yield make
    for each in made:
        each.stop()


def test_two_beats_with_a_one_second_schedule_start_one_run_per_tick(
    plan: Callable[..., Plan], database_url: str
) -> None:
    each_second = plan("each-second")
    each_second.send(count=2)  # one too many, by mistake

    each_second.until("four ticks", lambda: len(each_second.started()) >= 4)
    found = each_second.settle()

    assert len({t[2] for t in found}) == len(found)
    assert all(t[3] == "succeeded" for t in found)
    runs_of_schedule = query(
        database_url,
        "SELECT count(*) FROM stepwise_runs WHERE metadata->>'schedule' = %s",
        each_second.name,
    )[0][0]
    assert runs_of_schedule == len(found)
    # Both beats sent every tick they saw; the second copy of a tick started nothing.
    assert each_second.sent(0) >= 2 and each_second.sent(1) >= 2
    assert each_second.sent(0) + each_second.sent(1) > len(each_second.ticks())
    assert all(t[0].microsecond == 0 for t in found)  # a tick is the start of its second


def test_a_skip_schedule_starts_nothing_while_its_last_run_is_unfinished(
    plan: Callable[..., Plan], tmp_path: Path
) -> None:
    skipping = plan("skipping", agent="gated", input="wait", overlap="skip")
    skipping.send()

    wait_until(
        "two skipped ticks",
        lambda: [t[1] for t in skipping.ticks()].count("skipped") >= 2,
        within=60,
    )
    [held] = skipping.started()
    (tmp_path / f"{held[2]}.open").touch()
    skipping.until("a second run", lambda: len(skipping.started()) >= 2)
    found = skipping.settle()

    assert all(t[3] == "succeeded" for t in found)
    for earlier, later in itertools.pairwise(found):
        assert earlier[5] <= later[4], "two runs of a skip schedule overlapped"
    skipped = [t for t in skipping.ticks() if t[1] == "skipped"]
    assert len(skipped) >= 2 and all(t[2] is None for t in skipped)


def test_a_queue_schedule_runs_its_runs_one_after_another_in_tick_order(
    plan: Callable[..., Plan], tmp_path: Path, database_url: str
) -> None:
    queueing = plan("queueing", agent="gated", input="wait", overlap="queue")
    queueing.send()
    queueing.until("three runs", lambda: len(queueing.started()) >= 3)
    found = queueing.started()
    # The second run waits longer than Celery's default of three retries.
    second = found[1][2]
    wait_until("the second run to look five times", lambda: _waits(tmp_path, second) >= 5)

    assert [t[1] for t in found] == ["started"] + ["queued"] * (len(found) - 1)
    for position, (_, _, run_id, *_) in enumerate(found):
        wait_for_event(database_url, run_id, "tool.started", step=2)
        later = [t[3] for t in queueing.started()[position + 1 :]]
        assert later == ["queued"] * len(later), "a queued run started before its turn"
        (tmp_path / f"{run_id}.open").touch()
        wait_until("the run to end", lambda r=run_id: _status(database_url, r) in TERMINAL)

    found = queueing.started()
    assert all(t[3] == "succeeded" for t in found)
    for earlier, later_run in itertools.pairwise(found):
        assert earlier[5] <= later_run[4]


def test_a_cancel_previous_schedule_cancels_the_unfinished_run_and_starts_at_once(
    plan: Callable[..., Plan], database_url: str
) -> None:
    replacing = plan("replacing", agent="gated", input="wait", overlap="cancel_previous")
    replacing.send()
    replacing.until("two runs under way", lambda: _under_way(database_url, replacing) >= 2)
    found = replacing.settle()

    *replaced, last = found
    assert last[3] == "succeeded"
    assert [t[3] for t in replaced] == ["cancelled"] * len(replaced)
    # A run still queued when the next tick came ends at once; one at its gate ends at its
    # next step, and the next run must not wait for that.
    gated = next(n for n, t in enumerate(replaced) if _reached_gate(database_url, t[2]))
    assert found[gated + 1][4] < found[gated][5], "the next run waited for the cancelled one"


def test_redbeat_as_two_beats_sends_each_tick_from_one_of_them(
    plan: Callable[..., Plan],
) -> None:
    redbeat = plan("redbeat")
    redbeat.send(count=2, scheduler="redbeat.RedBeatScheduler")

    redbeat.until("three ticks", lambda: len(redbeat.started()) >= 3)
    found = redbeat.settle()

    assert all(t[3] == "succeeded" for t in found)
    assert sorted([redbeat.sent(0), redbeat.sent(1)])[0] == 0  # one holds the lock
    # Each tick ran once; a tick that came while the last run had not ended (a slow
    # machine) is skipped, as the default overlap says, and recorded with no run.
    ran = [t for t in redbeat.ticks() if t[1] != "skipped"]
    assert [t[1] for t in ran] == ["started"] * len(found) and len(ran) == len(found)


def test_the_schedules_command_lists_each_schedule_with_its_last_run(
    plan: Callable[..., Plan],
) -> None:
    listed_plan = plan("listed", owner="ops")
    listed_plan.send()
    listed_plan.until("a run", lambda: len(listed_plan.started()) >= 1)
    [*_, last] = listed_plan.settle()

    listed = CliRunner().invoke(cli, ["schedules"])

    assert listed.exit_code == 0, listed.output
    [line] = [x for x in listed.output.splitlines() if x.startswith(listed_plan.name)]
    assert "every 1 s" in line and "skip" in line and "next " in line
    assert line.endswith(f"last {last[2]} succeeded")


def _status(database_url: str, run_id: str) -> str:
    rows = query(database_url, "SELECT status FROM stepwise_runs WHERE id = %s", run_id)
    return str(rows[0][0])


def _waits(logs: Path, run_id: str) -> int:
    """How often the worker logged that the run waits for an earlier one."""
    text = "".join(p.read_text(errors="replace") for p in logs.glob("w*.log"))
    return text.count(f"Waiting('run {run_id} waits for run ")


def _under_way(database_url: str, schedule: Plan) -> int:
    """How many of the schedule's runs have reached their gate."""
    return sum(_reached_gate(database_url, t[2]) for t in schedule.started())


def _reached_gate(database_url: str, run_id: str) -> bool:
    return bool(
        query(
            database_url,
            "SELECT 1 FROM stepwise_events WHERE run_id = %s AND type = 'tool.started'",
            run_id,
        )
    )
