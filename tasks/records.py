"""A run's records as the steps read and write them: step rows, leases, the thread.

Plain functions over an open session or transaction; `tasks.steps` composes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, col, func, select
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from providers.types import Message, ToolResult, message_from_json, message_to_json
from storage import TERMINAL, Run, Step, ThreadMessage, Tx
from storage.events import STEP_SKIPPED
from storage.models import aware, utcnow
from tasks import loop
from tasks.runs import finish

T = TypeVar("T")

DATABASE_DOWN = (OperationalError, InterfaceError)
# How long a step holding a result (a paid model call, a tool that ran) keeps trying
# to record it while the database is unreachable, before the task itself retries.
RECORD_PATIENCE = 120.0


def recorded(write: Callable[[], T], patience: float = RECORD_PATIENCE) -> T:
    """Run `write` (a transaction that records a result in hand), retrying in place with
    backoff while the database is unreachable: a retried task would repeat the call."""
    for attempt in Retrying(
        retry=retry_if_exception_type(DATABASE_DOWN),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        stop=stop_after_delay(patience),
        reraise=True,
    ):
        with attempt:
            return write()
    raise AssertionError("unreachable: tenacity either returns or reraises")


@dataclass(frozen=True)
class Next:
    """What to schedule after a step: tool steps (with their queues), then a model step."""

    tools: tuple[tuple[int, str | None], ...] = ()
    model: int | None = None
    finish: bool = False


NOTHING = Next()


class NotReady(Exception):
    """The step cannot start yet; the task retries it shortly."""


@dataclass(frozen=True)
class Where:
    """The task execution a step runs in, kept on its record."""

    task_id: str | None = None
    queue: str | None = None


def step_of(db: Session, run_id: str, number: int) -> Step:
    """Step `number` of the run; `LookupError` if there is none."""
    step = db.exec(select(Step).where(Step.run_id == run_id, Step.number == number)).first()
    if step is None:
        raise LookupError(f"run {run_id} has no step {number}")
    return step


def claim(step: Step, where: Where, lease: float) -> bool:
    """Take the step for this task; False while another copy of it holds the lease.

    The same task id may always take it again: that is a retry, or a redelivery
    of the very message whose worker died. A different copy (a re-dispatch) waits
    until the holder's lease has run out.
    """
    now = utcnow()
    held = step.status == "running" and step.lease_until and aware(step.lease_until) > now
    if held and step.task_id != where.task_id:
        return False
    step.status = "running"
    step.attempts += 1
    step.started_at = now
    step.lease_until = now + timedelta(seconds=lease)
    step.task_id, step.queue = where.task_id, where.queue
    return True


def end_step(tx: Tx, step: Step, status: str, error: str | None = None) -> None:
    """Give the step its final status and drop its lease."""
    step.status, step.error, step.finished_at = status, error, utcnow()
    step.lease_until = None
    tx.db.add(step)


def stopped(tx: Tx, run: Run, step: Step | None) -> bool:
    """At a step boundary: end the run if it was cancelled or passed its deadline.

    True when the run has ended (now or before); the step, if any, is skipped.
    """
    status = run.status
    if status not in TERMINAL:
        stop = loop.boundary_stop(
            cancel_requested=run.cancel_requested,
            deadline=aware(run.deadline_at) if run.deadline_at else None,
            now=utcnow(),
        )
        if stop is None:
            return False
        status = stop
    if step is not None and step.status in ("pending", "running"):
        end_step(tx, step, "cancelled")
        if run.status not in TERMINAL:
            # Only before the terminal event, which stays the last one in the log.
            tx.emit(run.id, STEP_SKIPPED, {"kind": step.kind, "status": status}, step.number)
    if run.status not in TERMINAL:
        reason = "cancelled on request" if status == "cancelled" else "passed its deadline"
        finish(tx, run, status, reason=reason)
    return True


def count_model_calls(db: Session, run_id: str) -> int:
    """How many model steps of the run have succeeded."""
    return db.exec(
        select(func.count())
        .select_from(Step)
        .where(Step.run_id == run_id, Step.kind == "model", Step.status == "succeeded")
    ).one()


def invalid_streak(db: Session, run_id: str) -> tuple[int, str]:
    """How many tool rounds in a row, the latest last, held an invalid call; and its error."""
    steps = db.exec(select(Step).where(Step.run_id == run_id).order_by(col(Step.number))).all()
    rounds: list[list[bool]] = []
    last_error = ""
    for step in steps:
        if step.kind == "model":
            rounds.append([])
        elif rounds:
            invalid = bool(step.output and step.output.get("invalid"))
            rounds[-1].append(invalid)
            if invalid and step.output:
                last_error = step.output["content"]
    return loop.invalid_streak(rounds), last_error


def conversation(db: Session, thread_id: str) -> tuple[Message, ...]:
    """The thread's messages, oldest first."""
    rows = db.exec(
        select(ThreadMessage)
        .where(ThreadMessage.thread_id == thread_id)
        .order_by(col(ThreadMessage.position))
    ).all()
    return tuple(message_from_json({"role": r.role, "parts": r.parts}) for r in rows)


def append(db: Session, run: Run, message: Message) -> None:
    """Add a message at the end of the run's thread."""
    last = db.exec(
        select(func.max(ThreadMessage.position)).where(ThreadMessage.thread_id == run.thread_id)
    ).one()
    data = message_to_json(message)
    db.add(
        ThreadMessage(
            thread_id=run.thread_id,
            position=(last or 0) + 1,
            run_id=run.id,
            role=message.role,
            parts=data["parts"],
        )
    )
    db.flush()


def add_tool_results(db: Session, run: Run, number: int) -> bool:
    """Before model step `number`, add the results of the tool round before it (once).

    False while a tool step of that round has not finished: a chord callback that
    fired early (a tool step's result counted twice after a redelivery) must wait.
    """
    previous = db.exec(
        select(Step)
        .where(Step.run_id == run.id, Step.kind == "model", col(Step.number) < number)
        .order_by(col(Step.number).desc())
    ).first()
    if previous is None or previous.output is None:
        return True
    calls = message_from_json(previous.output["message"]).tool_calls
    if not calls:
        return True
    last = db.exec(
        select(ThreadMessage)
        .where(ThreadMessage.thread_id == run.thread_id)
        .order_by(col(ThreadMessage.position).desc())
    ).first()
    if last is not None and last.role == "tool":
        return True
    tools = db.exec(
        select(Step).where(
            Step.run_id == run.id,
            col(Step.number) > previous.number,
            col(Step.number) < number,
        )
    ).all()
    results = {
        s.call_id or "": ToolResult(
            s.call_id or "", s.tool_name or "", s.output["content"], s.output["is_error"]
        )
        for s in tools
        if s.output is not None
    }
    if any(s.status in ("pending", "running") for s in tools):
        return False
    append(db, run, loop.results_message(calls, results))
    return True


def steps_after(db: Session, run_id: str, numbers: list[int]) -> list[Step]:
    """The run's steps with these numbers."""
    return list(
        db.exec(select(Step).where(Step.run_id == run_id, col(Step.number).in_(numbers))).all()
    )
