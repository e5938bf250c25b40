"""Recording runs, ending them, cancelling them: the transitions of a run's status."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

from sqlalchemy import bindparam
from sqlmodel import col, delete, select

from storage import TERMINAL, Run, Thread, Tx
from storage.events import EVENT_FOR_STATUS, RUN_CANCEL_REQUESTED, RUN_QUEUED
from storage.models import utcnow
from storage.rows import RunRow, hold, lock_run, row_of
from storage.store import Db, insert_new
from tasks.agents import Agents
from tasks.errors import InvalidInput, NotYours, RunNotFound
from tasks.runtime import Runtime


@dataclass(frozen=True)
class NewRun:
    """A validated request to start a run."""

    run_id: str
    agent: str
    input: str
    thread: str | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    owner: str | None = None


def validate(
    agents: Agents,
    *,
    agent: Any,
    input: Any,
    run_id: Any = None,
    thread: Any = None,
    idempotency_key: Any = None,
    metadata: Any = None,
    owner: Any = None,
    max_input_chars: int,
) -> NewRun:
    """Check a start request; raise a `UserError` that says what is wrong."""
    if not isinstance(agent, str) or not agent:
        raise InvalidInput("agent must be a non-empty string naming an agent")
    agents.get(agent)
    if not isinstance(input, str) or not input.strip():
        raise InvalidInput("input must be a non-empty string")
    if len(input) > max_input_chars:
        raise InvalidInput(
            f"input is {len(input)} characters; the limit is {max_input_chars} "
            "(STEPWISE_MAX_INPUT_CHARS)"
        )
    if "\x00" in input:
        raise InvalidInput("input must not contain NUL characters")
    if run_id is None:
        run_id = str(uuid.uuid4())
    elif not isinstance(run_id, str) or not _is_uuid(run_id):
        raise InvalidInput(f"run_id must be a UUID string, got {run_id!r:.80}")
    named = (("thread", thread), ("idempotency_key", idempotency_key), ("owner", owner))
    for name, value in named:
        if value is not None and (
            not isinstance(value, str) or not 0 < len(value) <= 200 or "\x00" in value
        ):
            raise InvalidInput(f"{name} must be a string of 1 to 200 characters")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidInput("metadata must be a JSON object with string keys")
    try:
        encoded = json.dumps(metadata, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"metadata must be plain JSON: {error}") from None
    for name, text in (("input", input), *named, ("metadata", encoded)):
        if text is not None and not _storable(text):
            raise InvalidInput(
                f"{name} holds characters no database can store (NUL or lone surrogates)"
            )
    return NewRun(str(uuid.UUID(run_id)), agent, input, thread, idempotency_key, metadata, owner)


def accept(
    rt: Runtime,
    *,
    agent: Any,
    input: Any,
    run_id: Any = None,
    thread: Any = None,
    idempotency_key: Any = None,
    metadata: Any = None,
    owner: Any = None,
    then: Callable[[Tx, str], None] | None = None,
) -> tuple[str, bool]:
    """Validate a start request and record it: `(run id, created)`; `UserError` if bad.

    `then(tx, run_id)` runs in the same transaction when the run is new (to start it).
    """
    new = validate(
        rt.agents,
        agent=agent,
        input=input,
        run_id=run_id,
        thread=thread,
        idempotency_key=idempotency_key,
        metadata=metadata,
        owner=owner,
        max_input_chars=rt.settings.max_input_chars,
    )
    with rt.store.transaction() as tx:
        run_id, created = record(tx, new)
        if created and then is not None:
            then(tx, run_id)
        return run_id, created


def _storable(text: str) -> bool:
    """Valid UTF-8 without NUL: Postgres text refuses both, and JSON escapes NUL as \\u0000."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text and "\\u0000" not in text


def is_uuid(value: Any) -> TypeGuard[str]:
    """True for a string that is a UUID."""
    return isinstance(value, str) and _is_uuid(value)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def record(tx: Tx, new: NewRun) -> tuple[str, bool]:
    """Insert the run as `queued` (and its thread); `(run id, created)`.

    An existing run with the same id or idempotency key is returned instead, so
    a retried request never starts a second run. A run or thread of another
    owner is refused (`NotYours`), never returned or continued.
    """
    if new.thread is None and _record_alone(tx, new):
        return new.run_id, True
    existing = _existing(tx.db, new)
    if existing is not None:
        return existing, False
    thread_id = new.thread or new.run_id
    _take_thread(tx, thread_id, new.owner)
    run = _new_run(new, thread_id)
    if insert_new(tx.db, run):
        _queued(tx, run)
        return new.run_id, True
    # Its id or idempotency key was taken by a run that committed since `_existing` read.
    existing = _existing(tx.db, new)
    if existing is None:  # taken and freed again while this waited: too rare to retry here
        raise RuntimeError(f"run {new.run_id}: its id or idempotency key changed hands; send again")
    return existing, False


def _take_thread(tx: Tx, thread_id: str, owner: str | None) -> None:
    """Lock the thread's row, or insert it, so that two starts on one thread take turns;
    `NotYours` if it is another owner's, `InvalidInput` if a run on it is in progress."""
    while True:
        thread = tx.db.execute(_LOCK_THREAD, {"thread_id": thread_id}).first()
        if thread is not None:
            break
        if insert_new(tx.db, Thread(id=thread_id, owner=owner)):
            return  # a new thread: nobody's run is on it
        # Another start made it meanwhile (Postgres waited for its commit): lock it.
    if thread.owner != owner:
        raise NotYours(f"thread {thread_id!r} belongs to another owner")
    active = tx.db.execute(_ACTIVE_RUN, {"thread_id": thread_id}).scalar()
    if active is not None:
        raise InvalidInput(
            f"thread {thread_id!r} has a run in progress ({active}): "
            "wait for it to end or cancel it first"
        )


_LOCK_THREAD = (
    select(col(Thread.owner)).where(col(Thread.id) == bindparam("thread_id")).with_for_update()
)
_ACTIVE_RUN = select(col(Run.id)).where(
    col(Run.thread_id) == bindparam("thread_id"), col(Run.status).not_in(TERMINAL)
)
_RUN_BY_ID = select(col(Run.id), col(Run.owner)).where(col(Run.id) == bindparam("run_id"))
_RUN_BY_KEY = select(col(Run.id), col(Run.owner)).where(
    col(Run.idempotency_key) == bindparam("key")
)


def _new_run(new: NewRun, thread_id: str) -> Run:
    return Run(
        id=new.run_id,
        agent=new.agent,
        input=new.input,
        thread_id=thread_id,
        idempotency_key=new.idempotency_key,
        meta=new.metadata,
        owner=new.owner,
    )


def _queued(tx: Tx, run: Run) -> None:
    hold(tx.db, row_of(run))  # inserted just now: nobody else sees it before the commit
    tx.emit(run.id, RUN_QUEUED, {"agent": run.agent, "thread": run.thread_id})


def _record_alone(tx: Tx, new: NewRun) -> bool:
    """Record a run on a new thread named after it, in two statements; False, with
    nothing written, if the thread or the run (its id or its idempotency key) exists.

    A request sent again finds its thread, and `record` then answers with the run.
    """
    thread = Thread(id=new.run_id, owner=new.owner)
    if not insert_new(tx.db, thread):
        return False
    run = _new_run(new, thread.id)
    if insert_new(tx.db, run):
        _queued(tx, run)
        return True
    # Its idempotency key, or its id on another thread, is taken: the thread is not needed.
    tx.db.execute(delete(Thread).where(col(Thread.id) == thread.id))
    return False


def _existing(db: Db, new: NewRun) -> str | None:
    run = db.execute(_RUN_BY_ID, {"run_id": new.run_id}).first()
    if run is None and new.idempotency_key is not None:
        run = db.execute(_RUN_BY_KEY, {"key": new.idempotency_key}).first()
    if run is None:
        return None
    if run.owner != new.owner:
        what = "run id" if run.id == new.run_id else "idempotency key"
        raise NotYours(f"that {what} is taken by a run of another owner")
    found: str = run.id
    return found


def locked_run(db: Db, run_id: str) -> RunRow:
    """The run, with its row locked for this transaction; `RunNotFound` if there is none."""
    run = lock_run(db, run_id)
    if run is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    return run


def finish(
    tx: Tx,
    run: RunRow,
    status: str,
    *,
    reason: str | None = None,
    result: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move a (locked) run to a terminal status, once; False if it had already ended."""
    if run.status in TERMINAL:
        return False
    tx.write(run, status=status, result=result, error=reason, finished_at=now or utcnow())
    data: dict[str, Any] = {"status": status, "usage": run.usage, "cost_usd": run.cost_usd}
    if reason is not None:
        data["reason"] = reason
    if result is not None:
        data["result"] = result
    tx.emit(run.id, EVENT_FOR_STATUS[status], data)
    return True


def cancel(tx: Tx, run_id: str) -> str:
    """Cancel a run: at once if it is queued, at the next step boundary if it runs."""
    run = locked_run(tx.db, run_id)
    if run.status in TERMINAL or run.cancel_requested:
        return run.status
    if run.status == "queued":
        finish(tx, run, "cancelled", reason="cancelled before it started")
        return run.status
    tx.write(run, cancel_requested=True)
    tx.emit(run.id, RUN_CANCEL_REQUESTED, {})
    return run.status
