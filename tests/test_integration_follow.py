"""`stepwise follow` in another process sees a run's stored events exactly once, in order."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tasks import client
from tests.conftest import ROOT
from tests.test_integration_support import (
    AGENTS,
    events,
    open_gate,
    start_worker,
    wait_for_event,
)

STEPWISE = str(Path(sys.executable).parent / "stepwise")


class Follower:
    """`stepwise follow RUN --json` as a separate process, read line by line."""

    def __init__(self, run_id: str, *options: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STEPWISE_AGENTS": AGENTS}
        self.process = subprocess.Popen(
            [STEPWISE, "follow", run_id, "--json", *options],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.printed: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def first_event(self) -> dict[str, Any]:
        """The first line it prints (it has subscribed and replayed by then)."""
        line = self._lines.get(timeout=30)
        assert line is not None, self._stderr()
        self.printed.append(json.loads(line))
        return self.printed[0]

    def finish(self) -> tuple[int, list[dict[str, Any]]]:
        """Its exit code and every event it printed."""
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        while (line := self._lines.get(timeout=10)) is not None:
            self.printed.append(json.loads(line))
        return code, self.printed

    def _stderr(self) -> str:
        self.process.wait(timeout=30)
        assert self.process.stderr is not None
        return self.process.stderr.read()


def stored(printed: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """The stored events among what a follower printed (live-only deltas have no seq)."""
    return [(e["seq"], e["type"]) for e in printed if e["seq"] is not None]


def test_followers_in_other_processes_see_every_stored_event_once_in_order_from_their_start(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    start_worker(worker, monkeypatch, tmp_path)
    run_id = client.start_run("gated", "go through")
    after = wait_for_event(database_url, run_id, "tool.started", step=2)

    whole = Follower(run_id)
    later = Follower(run_id, "--after", str(after))
    assert whole.first_event()["seq"] == 1  # replayed from the database
    open_gate(tmp_path, run_id)  # the rest arrives live
    code, printed = whole.finish()
    later_code, later_printed = later.finish()

    assert code == later_code == 0
    log = [(seq, kind) for seq, kind, _ in events(database_url, run_id)]
    assert [seq for seq, _ in log] == list(range(1, len(log) + 1))
    assert log[-1][1] == "run.succeeded"
    assert stored(printed) == log
    assert stored(later_printed) == [(seq, kind) for seq, kind in log if seq > after]
    assert stored(later_printed)[0] == (after + 1, "tool.completed")


def test_the_follow_command_exits_zero_for_a_succeeded_run_and_non_zero_for_a_failed_one(
    worker: Any, database_url: str
) -> None:
    worker()
    succeeded = client.start_run("parallel", "add things")
    failed = client.start_run("looper", "loop")
    assert client.wait(succeeded, timeout=30).status == "succeeded"
    assert client.wait(failed, timeout=30).status == "failed"

    code, printed = Follower(succeeded).finish()
    failed_code, failed_printed = Follower(failed).finish()

    assert code == 0
    assert stored(printed) == [(seq, kind) for seq, kind, _ in events(database_url, succeeded)]
    assert failed_code == 1
    assert stored(failed_printed) == [(seq, kind) for seq, kind, _ in events(database_url, failed)]


def test_a_follower_of_a_run_cancelled_at_a_step_boundary_sees_every_stored_event(
    worker: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    start_worker(worker, monkeypatch, tmp_path)
    run_id = client.start_run("gated", "go through")
    wait_for_event(database_url, run_id, "tool.started", step=2)
    live = Follower(run_id)
    live.first_event()
    client.cancel(run_id)
    open_gate(tmp_path, run_id)  # the next model step finds the cancel and stops the run
    assert client.wait(run_id, timeout=30).status == "cancelled"

    code, printed = live.finish()
    replay_code, replayed = Follower(run_id).finish()

    assert code == replay_code == 1
    assert stored(replayed) == stored(printed)
    log = [(seq, kind) for seq, kind, _ in events(database_url, run_id)]
    assert stored(printed) == log
    assert [kind for _, kind in log][-2:] == ["step.skipped", "run.cancelled"]
