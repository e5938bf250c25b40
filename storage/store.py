"""Transactions that append events: commit first, publish second."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine, bindparam, insert, inspect, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from storage.events import LIVE_ONLY, MODEL_COMPLETED, MODEL_RETRACTED, MODEL_STARTED
from storage.fanout import Fanout
from storage.models import Event, Run, Step, aware, utcnow

log = logging.getLogger(__name__)

MODEL_HISTORY = (MODEL_STARTED, MODEL_COMPLETED, MODEL_RETRACTED)
EVENTS = Event.__table__  # type: ignore[attr-defined]
RUNS = Run.__table__  # type: ignore[attr-defined]
STEPS = Step.__table__  # type: ignore[attr-defined]
EVENT_COLUMNS = ("run_id", "seq", "type", "step", "data", "created_at")
# Session.info keys: the runs whose rows this transaction locked (or inserted), and
# the event counters of those runs that are not written yet.
_HELD = "stepwise.held_runs"
_COUNTERS = "stepwise.unwritten_counters"


def hold(db: Session, run: Run) -> Run:
    """Note that this transaction owns `run`'s row (locked, or inserted by it).

    Events of a held run take their numbers from the row in memory, and the counter
    is written with the events when the transaction ends: no extra round trip.
    """
    db.info.setdefault(_HELD, {})[run.id] = run
    return run


# Built once: every step locks its run, and building the statement costs as much as a
# third of running it.
_LOCK_RUN = (
    select(Run)
    .where(col(Run.id) == bindparam("run_id"))
    .with_for_update()
    .execution_options(populate_existing=True)
)
_LOCK_RUN_AND_STEPS = (
    select(Run, Step)
    .join(Step, col(Step.run_id) == col(Run.id))
    .where(col(Run.id) == bindparam("run_id"))
    .order_by(col(Step.number))
    .with_for_update()
    .execution_options(populate_existing=True)
)
_LOCK_RUN_AND_STEP = _LOCK_RUN_AND_STEPS.where(col(Step.number) == bindparam("number"))


# A held run's event counter, written with its events (`Tx.write_events`); on Postgres
# one event and its counter go in one statement, through a data-modifying CTE.
_COUNTER = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("c_id"))
    .values(last_seq=bindparam("c_seq"), progressed_at=bindparam("c_at"))
)
_EVENT_WITH_COUNTER = (
    insert(EVENTS)
    # Bind names that are no column's: an UPDATE reads a parameter named after one
    # of its table's columns as a value to set.
    .values({c: bindparam(f"e_{c}", type_=EVENTS.c[c].type) for c in EVENT_COLUMNS})
    .add_cte(
        update(RUNS)
        .where(RUNS.c.id == bindparam("e_run_id"))
        .values(last_seq=bindparam("e_seq"), progressed_at=bindparam("e_created_at"))
        .cte("counter")
    )
)


def _update_by_key(table: Any) -> Any:
    """`UPDATE table SET … WHERE key = :pk_`: the parameters name the columns it sets."""
    (key,) = table.primary_key.columns
    return update(table).where(key == bindparam("pk_"))


# Built once: the steps write their run and step rows this way, several times each.
_UPDATE_BY_KEY = {table.name: _update_by_key(table) for table in (RUNS, STEPS)}


def lock_run(db: Session, run_id: str) -> Run | None:
    """The run with its row locked until the transaction ends, read fresh; None if absent."""
    _write_counter(db, run_id)
    run = db.exec(_LOCK_RUN, params={"run_id": run_id}).first()
    return hold(db, run) if run is not None else None


def lock_run_and_steps(
    db: Session, run_id: str, number: int | None = None
) -> tuple[Run, list[Step]] | None:
    """The run and its steps (or only step `number`), every row locked and read fresh,
    in one round trip; None if the run or the step is absent, or the run has no steps.

    Postgres locks the rows in the order of the FROM list, the run's first, as every
    transaction that writes a step has. Locking the steps' rows as well is what keeps
    them fresh: a statement that waited for a lock returns the newest committed
    version of every row it locks, but the snapshot's version of any row it only reads.
    """
    _write_counter(db, run_id)
    if number is None:
        found = db.exec(_LOCK_RUN_AND_STEPS, params={"run_id": run_id}).all()
    else:
        found = db.exec(_LOCK_RUN_AND_STEP, params={"run_id": run_id, "number": number}).all()
    if not found:
        return None
    return hold(db, found[0][0]), [step for _, step in found]


def _write_counter(db: Session, run_id: str) -> None:
    """Write the run's event counter if this transaction holds it unwritten: a run read
    fresh must not lose this transaction's count."""
    counters = db.info.get(_COUNTERS, {})
    if run_id in counters:
        seq, at = counters.pop(run_id)
        db.execute(_COUNTER, {"c_id": run_id, "c_seq": seq, "c_at": at})


class EventRecord(Protocol):
    """What an event is made of: a stored `Event` row or an `Emitted` one."""

    @property
    def run_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def step(self) -> int | None: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Emitted:
    """An event emitted in a transaction: the row `Tx.write_events` inserts."""

    run_id: str
    seq: int
    type: str
    step: int | None
    data: dict[str, Any]
    created_at: datetime

    def row(self) -> dict[str, Any]:
        """The event's columns."""
        return {c: getattr(self, c) for c in EVENT_COLUMNS}


def event_payload(event: EventRecord) -> dict[str, Any]:
    """An event as JSON data, the same shape live and replayed."""
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "type": event.type,
        "step": event.step,
        "data": event.data,
        "at": aware(event.created_at).isoformat(),
    }


@dataclass
class Tx:
    """One database transaction; events emitted in it are published after it commits."""

    db: Session
    outbox: list[Emitted] = field(default_factory=list)
    _written: int = 0  # how many of the outbox's events are in the database

    def emit(
        self, run_id: str, type: str, data: dict[str, Any], step: int | None = None
    ) -> Emitted:
        """Append an event with the run's next sequence number.

        The counter lives on the run row, so concurrent steps of one run queue up
        on its row lock and numbers stay 1, 2, 3… without gaps (a rollback undoes
        the increment with the event). A run this transaction holds (`hold`) is
        counted in memory; any other takes its number with an `UPDATE … RETURNING`.
        """
        assert type not in LIVE_ONLY, f"{type} is published live, never stored"
        now = utcnow()
        run = self.db.info.get(_HELD, {}).get(run_id)
        if run is not None:
            seq = run.last_seq + 1
            _count(self.db, run, seq, now)
        else:
            seq = self.db.execute(
                update(Run)
                .where(col(Run.id) == run_id)
                .values(last_seq=col(Run.last_seq) + 1, progressed_at=now)
                .returning(col(Run.last_seq))
            ).scalar_one()
        event = Emitted(run_id, seq, type, step, data, now)
        self.outbox.append(event)
        return event

    def write(self, row: Any, **values: Any) -> None:
        """Set these columns of a stored row and write them now, in one UPDATE by its key.

        The session's flush would write the same, but its unit of work costs a step
        more than the statement does. The row is left as if loaded with these values:
        clean, so no flush writes them again. A row the database does not have yet
        only takes the values, and the session inserts it as usual.
        """
        state = inspect(row)
        if not state.persistent:
            for name, value in values.items():
                setattr(row, name, value)
            self.db.add(row)
            return
        mapper = state.mapper
        table = mapper.local_table
        statement = _UPDATE_BY_KEY.get(table.name)
        if statement is None:
            statement = _update_by_key(table)
        (key,) = state.identity
        params = {mapper.columns[name].key: value for name, value in values.items()}
        self.db.execute(statement, {"pk_": key, **params})
        for name, value in values.items():
            set_committed_value(row, name, value)

    def write_events(self) -> None:
        """Insert the events emitted so far, with their runs' counters, in one statement.

        Events are append-only and nothing reads them back in the transaction, so
        they skip the ORM's unit of work: one Core INSERT of every row. On Postgres
        the held runs' counters ride along in the same statement (a data-modifying
        CTE); elsewhere they take an UPDATE of their own.
        """
        pending = self.outbox[self._written :]
        if not pending:
            return
        self.db.flush()  # the runs (and threads, steps) the events refer to
        counters = self.db.info.pop(_COUNTERS, {})
        postgres = self.db.get_bind().dialect.name == "postgresql"
        if postgres and len(pending) == 1 and set(counters) == {pending[0].run_id}:
            event = pending[0]  # the common case
            self.db.execute(_EVENT_WITH_COUNTER, {f"e_{c}": v for c, v in event.row().items()})
        else:
            for run_id, (seq, at) in counters.items():
                self.db.execute(_COUNTER, {"c_id": run_id, "c_seq": seq, "c_at": at})
            self.db.execute(insert(EVENTS), [e.row() for e in pending])
        self._written = len(self.outbox)


def _count(db: Session, run: Run, seq: int, at: datetime) -> None:
    """Give a held run its new last event number and progress time.

    A run the database already has keeps them out of the ORM's flush: they are
    committed values for the session, and `Tx.write_events` writes them with the
    events. A run this transaction inserts gets them in its INSERT.
    """
    if inspect(run).persistent:
        set_committed_value(run, "last_seq", seq)
        set_committed_value(run, "progressed_at", at)
        db.info.setdefault(_COUNTERS, {})[run.id] = (seq, at)
    else:
        run.last_seq, run.progressed_at = seq, at
        db.add(run)


Observer = Callable[["Store", dict[str, Any]], None]


class Observers:
    """Callables told of each committed event (its payload) after the commit.

    The one process-wide hook for metrics and traces, like a Celery signal: an
    observer must be quick and must not write. One that raises is logged and
    skipped, so the step goes on. With none registered, a commit costs nothing more.
    """

    def __init__(self) -> None:
        self._all: tuple[Observer, ...] = ()  # replaced, never mutated: safe across threads

    def add(self, observer: Observer) -> None:
        """Register `observer`; a second registration of the same one does nothing."""
        if observer not in self._all:
            self._all = (*self._all, observer)

    def remove(self, observer: Observer) -> None:
        """Unregister `observer`, if it was registered."""
        self._all = tuple(o for o in self._all if o != observer)

    def notify(self, store: Store, payload: dict[str, Any]) -> None:
        """Tell every observer of a committed event."""
        for observer in self._all:
            try:
                observer(store, payload)
            except Exception:
                log.exception("event observer %r failed on %s", observer, payload.get("type"))


OBSERVERS = Observers()


class Store:
    """The database and the fan-out together."""

    def __init__(self, engine: Engine, fanout: Fanout, observers: Observers = OBSERVERS) -> None:
        self.engine = engine
        self.fanout = fanout
        self.observers = observers

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction that commits on success and then publishes its events."""
        with Session(self.engine, expire_on_commit=False) as db:
            tx = Tx(db)
            yield tx
            tx.write_events()
            db.commit()
        for event in tx.outbox:
            payload = event_payload(event)
            self.fanout.publish(event.run_id, payload)
            self.observers.notify(self, payload)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only."""
        with Session(self.engine, expire_on_commit=False) as db:
            yield db

    def publish_live(self, run_id: str, type: str, data: dict[str, Any], step: int) -> None:
        """Publish an event that is not stored (a token delta)."""
        payload = {
            "run_id": run_id,
            "seq": None,
            "type": type,
            "step": step,
            "data": data,
            "at": utcnow().isoformat(),
        }
        self.fanout.publish(run_id, payload)

    def model_history(self, run_id: str, upto: int) -> list[dict[str, Any]]:
        """The run's model.started, .completed and .retracted events with `seq <= upto`."""
        with self.reading() as db:
            rows = db.exec(
                select(Event)
                .where(
                    Event.run_id == run_id,
                    Event.seq <= upto,
                    col(Event.type).in_(MODEL_HISTORY),
                )
                .order_by(col(Event.seq))
            ).all()
            return [event_payload(e) for e in rows]

    def events_after(self, run_id: str, after: int) -> list[dict[str, Any]]:
        """The run's committed events with `seq > after`, in order."""
        with self.reading() as db:
            rows = db.exec(
                select(Event)
                .where(Event.run_id == run_id, Event.seq > after)
                .order_by(col(Event.seq))
            ).all()
            return [event_payload(e) for e in rows]
