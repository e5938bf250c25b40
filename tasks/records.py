"""A run's records as the steps read and write them: step rows, leases, the thread.

Plain functions over a transaction (`Tx`) or its connection (`Db`); `tasks.steps`
composes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Text, bindparam, cast
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import col, select
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from providers.types import (
    Message,
    ToolCall,
    ToolResult,
    message_from_json,
    message_from_stored,
    message_to_json,
)
from storage import TERMINAL, ThreadMessage, Tx
from storage.events import STEP_SKIPPED
from storage.models import aware, utcnow
from storage.rows import RunRow, StepRow, lock_run_and_round, lock_run_and_steps, steps_of
from storage.store import Db, insert_later
from tasks import loop
from tasks.runs import finish, locked_run

T = TypeVar("T")

# The database cannot be reached, or no pooled connection came free in time (a stalled
# database holds them all): a step retries later, as for any outage.
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeout)
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


def locked_step(db: Db, run_id: str, number: int) -> tuple[RunRow, StepRow]:
    """The run and its step `number`, both rows locked for this transaction and read
    fresh, in one statement; `RunNotFound` or `LookupError` if either is absent."""
    found = lock_run_and_steps(db, run_id, number)
    if found is not None:
        return found[0], found[1][0]
    return locked_run(db, run_id), step_of(db, run_id, number)


def locked_run_steps(db: Db, run_id: str, number: int) -> tuple[RunRow, list[StepRow]]:
    """The run and every step of it, in order, all rows locked and read fresh, in one
    statement: one read serves all of model step `number`'s decisions. `RunNotFound`
    if there is no such run. An earlier round's outputs are left out, but for its
    invalid tool calls' (`lock_run_and_round`).

    Rows inserted while the statement waited for the lock are not in its snapshot. If
    step `number` is missing for that reason, the steps are read again, now under the
    lock: the steps a decision reads are inserted together with it.
    """
    found = lock_run_and_round(db, run_id, number)
    if found is None:
        return locked_run(db, run_id), steps_of(db, run_id)
    run, steps = found
    if not any(step.number == number for step in steps):
        steps = steps_of(db, run_id)
    return run, steps


# Columns, not ORM objects: a model step reads its whole conversation, and loading each
# message as an object cost as much again as reading it (60 messages: 0.8 → 0.4 ms). The
# parts come as JSON text, parsed once, by pydantic (`message_from_stored`).
_HISTORY = (
    select(col(ThreadMessage.role), cast(col(ThreadMessage.parts), Text).label("parts"))
    .where(col(ThreadMessage.thread_id) == bindparam("thread_id"))
    .order_by(col(ThreadMessage.position))
)


def step_of(db: Db, run_id: str, number: int) -> StepRow:
    """Step `number` of the run; `LookupError` if there is none."""
    found = steps_of(db, run_id, [number])
    if not found:
        raise LookupError(f"run {run_id} has no step {number}")
    return found[0]


def claim(tx: Tx, step: StepRow, where: Where, lease: float, **also: Any) -> bool:
    """Take the step for this task and write it so; False while another copy of it
    holds the lease. `also` are more columns to write with the claim.

    The same task id may always take it again: that is a retry, or a redelivery
    of the very message whose worker died. A different copy (a re-dispatch) waits
    until the holder's lease has run out.
    """
    now = utcnow()
    held = step.status == "running" and step.lease_until and aware(step.lease_until) > now
    if held and step.task_id != where.task_id:
        return False
    tx.write(
        step,
        status="running",
        attempts=step.attempts + 1,
        started_at=now,
        lease_until=now + timedelta(seconds=lease),
        task_id=where.task_id,
        queue=where.queue,
        **also,
    )
    return True


def end_step(tx: Tx, step: StepRow, status: str, error: str | None = None, **also: Any) -> None:
    """Give the step its final status (and `also` these columns) and drop its lease."""
    tx.write(step, status=status, error=error, finished_at=utcnow(), lease_until=None, **also)


def stopped(tx: Tx, run: RunRow, step: StepRow | None) -> bool:
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


def find_step(steps: list[StepRow], run_id: str, number: int) -> StepRow:
    """Step `number` among the run's `steps`; `LookupError` if there is none."""
    for step in steps:
        if step.number == number:
            return step
    raise LookupError(f"run {run_id} has no step {number}")


def count_model_calls(steps: list[StepRow]) -> int:
    """How many of these model steps have succeeded."""
    return sum(1 for s in steps if s.kind == "model" and s.status == "succeeded")


def invalid_streak(steps: list[StepRow]) -> tuple[int, str]:
    """How many tool rounds in a row, the latest last, held an invalid call; and its error."""
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


def thread_history(db: Db, thread_id: str) -> tuple[Message, ...]:
    """The thread's stored messages, oldest first, as the model reads them."""
    rows = db.execute(_HISTORY, {"thread_id": thread_id})
    return tuple(message_from_stored(row.role, row.parts) for row in rows)


def append(db: Db, run: RunRow, message: Message) -> None:
    """Add a message at the end of the run's thread (its INSERT waits for the
    transaction's other writes: `insert_later`)."""
    row = {
        "thread_id": run.thread_id,
        "run_id": run.id,
        "role": message.role,
        "parts": message_to_json(message)["parts"],
        "created_at": utcnow(),
    }
    insert_later(db, "message", row)


def add_steps(db: Db, run_id: str, steps: list[tuple[int, ToolCall | None]]) -> None:
    """Insert pending steps, with the transaction's other writes (`insert_later`):
    (number, None) is a model step, (number, call) a tool step."""
    now = utcnow()
    for number, call in steps:
        row = {
            "run_id": run_id,
            "number": number,
            "kind": "model" if call is None else "tool",
            "call_id": call.id if call else None,
            "tool_name": call.name if call else None,
            "arguments": call.arguments if call else None,
            "created_at": now,
        }
        insert_later(db, "step", row)


def tool_results(steps: list[StepRow], number: int, history: tuple[Message, ...]) -> Message | None:
    """The results message of the tool round before model step `number`, if it is due.

    None when that round added its results already, or there was no round. Raises
    `NotReady` while a tool step of the round has not finished: a chord callback
    that fired early (a tool step's result counted twice after a redelivery) waits.
    """
    earlier = [s for s in steps if s.kind == "model" and s.number < number]
    previous = earlier[-1] if earlier else None
    if previous is None or previous.output is None:
        return None
    calls = message_from_json(previous.output["message"]).tool_calls
    if not calls or (history and history[-1].role == "tool"):
        return None
    tools = [s for s in steps if previous.number < s.number < number]
    if any(s.status in ("pending", "running") for s in tools):
        raise NotReady(f"run {previous.run_id}: the tool round before step {number} is running")
    results = {
        s.call_id or "": ToolResult(
            s.call_id or "", s.tool_name or "", s.output["content"], s.output["is_error"]
        )
        for s in tools
        if s.output is not None
    }
    return loop.results_message(calls, results)
