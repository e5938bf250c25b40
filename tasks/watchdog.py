"""The watchdog: no run stays `queued` or `running` for ever.

A periodic task (`stepwise.watchdog`, on Celery beat) looks for unfinished runs
that have stored no event for longer than their steps may take, with no step in
flight (no unexpired lease). It sends their unfinished steps again, which is safe
because every step finds its own record, or ends them: past the deadline as
`timed_out`, and as `failed` once resuming has not helped `max_resumes` times.
Typical causes: messages lost with a Redis that restarted without persistence,
or a worker killed where nothing redelivers its message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from storage import TERMINAL, Run, Tx
from storage.events import MODEL_RETRYING, RUN_RESUMED, STEP_SKIPPED
from storage.models import Event, aware, utcnow
from storage.rows import RunRow, StepRow, steps_of
from storage.store import Db
from tasks.agents import Agent
from tasks.errors import UnknownAgent
from tasks.records import NOTHING, Next, end_step
from tasks.runs import finish, locked_run
from tasks.runtime import Runtime
from tasks.timing import tool_lease
from tasks.tool_steps import tool_of


@dataclass(frozen=True)
class Resume:
    """A stalled run to start again: what to send (`start` for a run never started)."""

    run_id: str
    after: Next = NOTHING
    start: bool = False


def sweep(rt: Runtime, now: datetime | None = None) -> list[Resume]:
    """Resume or end every stalled run; what to dispatch for the resumed ones."""
    now = now or utcnow()
    grace = rt.settings.watchdog_grace
    with rt.store.reading() as db:
        candidates = db.exec(
            select(Run.id).where(
                col(Run.status).in_(("queued", "running")),
                col(Run.progressed_at) < now - timedelta(seconds=grace),
            )
        ).all()
    resumed = []
    for run_id in candidates:
        with rt.store.transaction() as tx:
            found = _check(rt, tx, run_id, now)
        if found is not None:
            resumed.append(found)
    return resumed


def stall_after(agent: Agent | None, grace: float) -> float:
    """Seconds without an event after which a run of `agent` with nothing in flight stalled."""
    if agent is None:
        return grace + Agent.step_timeout
    longest = max([agent.step_timeout, *(tool_lease(t, agent) for t in agent.tools)])
    return longest + grace


def _check(rt: Runtime, tx: Tx, run_id: str, now: datetime) -> Resume | None:
    """Under the run's lock, look again and act: the run may have moved meanwhile."""
    run = locked_run(tx.db, run_id)
    if run.status in TERMINAL or run.progressed_at is None:
        return None
    agent = _agent(rt, run.agent)
    quiet = (now - aware(run.progressed_at)).total_seconds()
    steps = steps_of(tx.db, run_id)
    if any(s.status == "running" and s.lease_until and aware(s.lease_until) > now for s in steps):
        return None  # a step is in flight; its lease says how long it may take
    if run.cancel_requested:  # say, a step waiting out a long retry countdown
        _end(tx, run, steps, "cancelled", "cancelled on request (ended by the watchdog)")
        return None
    if run.deadline_at is not None and now >= aware(run.deadline_at):
        _end(tx, run, steps, "timed_out", "passed its deadline (found by the watchdog)")
        return None
    if quiet < stall_after(agent, rt.settings.watchdog_grace) + _countdown(tx.db, run):
        return None
    if run.resumes >= rt.settings.watchdog_max_resumes:
        reason = (
            f"stalled: no progress for {quiet:.0f} s after the watchdog resumed it "
            f"{run.resumes} time(s)"
        )
        _end(tx, run, steps, "failed", reason)
        return None
    found = _unfinished(rt, run, steps)
    if found is None:
        _end(tx, run, steps, "failed", "stalled with no step left to run")
        return None
    tx.write(run, resumes=run.resumes + 1)
    numbers = [n for n, _ in found.after.tools] + (
        [found.after.model] if found.after.model is not None else []
    )
    tx.emit(
        run_id,
        RUN_RESUMED,
        {"quiet_for": round(quiet, 3), "resumes": run.resumes, "steps": numbers},
    )
    return found


def _agent(rt: Runtime, name: str) -> Agent | None:
    try:
        return rt.agents.get(name)
    except UnknownAgent:
        return None


def _countdown(db: Db, run: RunRow) -> float:
    """A model step waiting out a retry countdown is not stalled until it has passed."""
    last = db.execute(
        select(col(Event.type), col(Event.data))
        .where(Event.run_id == run.id)
        .order_by(col(Event.seq).desc())
        .limit(1)
    ).first()
    if last is None or last.type != MODEL_RETRYING:
        return 0.0
    return float(last.data.get("countdown") or 0.0)


def _unfinished(rt: Runtime, run: RunRow, steps: Sequence[StepRow]) -> Resume | None:
    """What to send again: the run's start, or its open tool steps and model step."""
    if run.status == "queued":
        return Resume(run.id, start=True)
    models = [s for s in steps if s.kind == "model"]
    if not models:
        return Resume(run.id, start=True)
    last = models[-1]
    if last.status == "succeeded":
        return Resume(run.id, Next(finish=True))  # a final answer whose finish got lost
    if last.status not in ("pending", "running"):
        return None
    tools = tuple(
        (s.number, _queue(rt, run.agent, s.tool_name or ""))
        for s in steps
        if s.kind == "tool" and s.status in ("pending", "running") and s.number < last.number
    )
    return Resume(run.id, Next(tools=tools, model=last.number))


def _queue(rt: Runtime, agent: str, name: str) -> str | None:
    tool = tool_of(rt, agent, name)
    return tool.queue if tool else None


def _end(tx: Tx, run: RunRow, steps: Sequence[StepRow], status: str, reason: str) -> None:
    for step in steps:
        if step.status in ("pending", "running"):
            end_step(tx, step, "cancelled")
            tx.emit(run.id, STEP_SKIPPED, {"kind": step.kind, "status": status}, step.number)
    finish(tx, run, status, reason=reason)
