"""Transactions that append events: commit first, publish second."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Result,
    Table,
    bindparam,
    func,
    insert,
    inspect,
    literal,
    update,
)
from sqlalchemy import event as orm_events
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.sql.schema import ScalarElementColumnDefault
from sqlmodel import Session, col, select

from storage.events import LIVE_ONLY, MODEL_COMPLETED, MODEL_RETRACTED, MODEL_STARTED
from storage.fanout import Fanout
from storage.models import Event, Run, ThreadMessage, aware, utcnow
from storage.rows import STEPS, RunRow, StepRow, held

log = logging.getLogger(__name__)

MODEL_HISTORY = (MODEL_STARTED, MODEL_COMPLETED, MODEL_RETRACTED)
EVENTS = Event.__table__  # type: ignore[attr-defined]
EVENT_COLUMNS = ("run_id", "seq", "type", "step", "data", "created_at")
# Session.info key of a transaction's ORM session: its `Db`.
_DB = "stepwise.db"


MESSAGES = ThreadMessage.__table__  # type: ignore[attr-defined]


def _binds(table: Table, columns: tuple[str, ...], prefix: str) -> dict[str, Any]:
    return {c: bindparam(prefix + c, type_=table.c[c].type) for c in columns}


def _row_values(table: Table, columns: tuple[str, ...], prefix: str) -> dict[str, Any]:
    """An INSERT's values: binds for `columns`, and the scalar default of every other
    column that has one. Inside a CTE SQLAlchemy would bind those without the prefix."""
    values = _binds(table, columns, prefix)
    for column in table.columns:
        default = column.default
        if column.key in values or default is None:
            continue
        if not isinstance(default, ScalarElementColumnDefault):
            raise TypeError(f"{table.name}.{column.key} has a computed default: pass its value")
        values[column.key] = literal(default.arg, type_=column.type)
    return values


def _message_insert(columns: tuple[str, ...], prefix: str) -> Any:
    """A message at the end of its thread: the position is one past the thread's last,
    counted by the database inside the INSERT itself."""
    thread = bindparam(prefix + "thread_id", type_=MESSAGES.c.thread_id.type)
    last = select(func.coalesce(func.max(MESSAGES.c.position), 0)).where(
        MESSAGES.c.thread_id == thread
    )
    rest = tuple(c for c in columns if c != "thread_id")
    values = _row_values(MESSAGES, rest, prefix)
    return insert(MESSAGES).values(thread_id=thread, position=last.scalar_subquery() + 1, **values)


def _row_insert(table: Table) -> Callable[[tuple[str, ...], str], Any]:
    return lambda columns, prefix: insert(table).values(_row_values(table, columns, prefix))


# The rows a transaction inserts later (`insert_later`), by kind: each kind's INSERT of
# one row with the given columns, its bind names under a prefix.
_INSERTS: dict[str, Callable[[tuple[str, ...], str], Any]] = {
    "event": _row_insert(EVENTS),
    "step": _row_insert(STEPS),
    "message": _message_insert,
}
# Kinds of which one statement holds one row: a message's position reads the thread as
# the statement began, so a second message in it would take the same position.
_ALONE = frozenset({"message"})
# A part of a statement that writes: ("insert", kind, columns) for a new row, or
# ("update", table, columns) for one row's columns, found by its key.
Part = tuple[Any, ...]


@dataclass
class _Unwritten:
    """What a transaction wrote that is not in the database yet."""

    inserts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    rows: dict[tuple[Table, Any], dict[str, Any]] = field(default_factory=dict)


class Db:
    """A transaction's connection: what steps read and write, as Core statements.

    A step's transaction is a few statements it builds itself; an ORM `Session` around
    them cost more than the statements (beginning, committing and closing it: about
    0.1 ms a transaction). What still wants model objects (a schedule's tick, say) uses
    `orm`, a session made on first use inside the same transaction.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.dialect: str = connection.dialect.name
        self.held: dict[str, RunRow] = {}  # the runs it holds, by id (`storage.rows.hold`)
        self.unwritten: _Unwritten | None = None  # what waits to be written (`insert_later`)
        self._orm: Session | None = None

    def execute(self, statement: Executable, params: dict[str, Any] | None = None) -> Result[Any]:
        """Run a statement in the transaction. Any statement but an INSERT first writes
        what was left for later, so that whatever reads or updates the rows sees them;
        and any statement first writes what was added through `orm`, as its autoflush
        would."""
        self.flush()
        if self.unwritten is not None and not statement.is_insert:
            write_pending(self)
        return self.connection.execute(statement, params)

    @property
    def orm(self) -> Session:
        """An ORM session in this transaction, for model objects; committed with it."""
        if self._orm is None:
            self._orm = Session(bind=self.connection, expire_on_commit=False, info={_DB: self})
        return self._orm

    def flush(self) -> None:
        """Write the objects added to `orm` (nothing if it was never used)."""
        if self._orm is not None:
            self._orm.flush()

    def close(self) -> None:
        """Let go of `orm`'s objects; the transaction is the connection's to end."""
        if self._orm is not None:
            self._orm.close()


def _unwritten(db: Db) -> _Unwritten:
    if db.unwritten is None:
        db.unwritten = _Unwritten()
    return db.unwritten


def _set_later(db: Db, table: Table, key: Any, columns: dict[str, Any]) -> None:
    """Set columns of row `key` of `table`, to be written with the rest (`write_pending`)."""
    _unwritten(db).rows.setdefault((table, key), {}).update(columns)


def insert_later(db: Db, kind: str, row: dict[str, Any]) -> None:
    """Insert `row` (an "event", a "step" or a "message") before the next statement that
    is not an INSERT, or at the end of the transaction.

    Nothing waits on the INSERT, so on Postgres it mostly rides along with the
    transaction's other writes in one statement (`write_pending`).
    """
    unwritten = _unwritten(db)
    if kind in _ALONE and any(k == kind for k, _ in unwritten.inserts):
        write_pending(db)
        unwritten = _unwritten(db)
    unwritten.inserts.append((kind, row))


def _part(part: Part, prefix: str) -> Any:
    if part[0] == "insert":
        return _INSERTS[part[1]](part[2], prefix)
    _, table, columns = part
    (key,) = table.primary_key.columns
    return (
        update(table)
        .where(key == bindparam(prefix + "key_"))
        .values(_binds(table, columns, prefix))
    )


@lru_cache(maxsize=512)
def _statement(parts: tuple[Part, ...]) -> Any:
    """One statement for every part: the first is the statement, the others its
    data-modifying CTEs (Postgres). Bind names are `p{i}_` and a column's name, or
    `p{i}_key_` for a row's key: no column's own name, which an UPDATE would read as a
    value to set. Built once per shape; the shapes are few."""
    statement = _part(parts[0], "p0_")
    for i, part in enumerate(parts[1:], 1):
        statement = statement.add_cte(_part(part, f"p{i}_").cte(f"p{i}"))
    return statement


def write_pending(db: Db) -> None:
    """Write what `insert_later` and `Tx.write` left for later: in one statement on
    Postgres, one statement each elsewhere."""
    unwritten, db.unwritten = db.unwritten, None
    if unwritten is None:
        return
    parts: list[tuple[Part, dict[str, Any]]] = [
        (("insert", kind, tuple(row)), row) for kind, row in unwritten.inserts
    ]
    for (table, key), columns in unwritten.rows.items():
        parts.append((("update", table, tuple(columns)), {"key_": key, **columns}))
    if not parts:
        return
    if db.dialect == "postgresql":
        params = {f"p{i}_{name}": v for i, (_, row) in enumerate(parts) for name, v in row.items()}
        db.connection.execute(_statement(tuple(part for part, _ in parts)), params)
        return
    for part, row in parts:
        db.connection.execute(_statement((part,)), {f"p0_{name}": v for name, v in row.items()})


@orm_events.listens_for(Session, "do_orm_execute")
def _written_before_reading(state: ORMExecuteState) -> None:
    """What `Db.execute` does, for a transaction's ORM session (`Db.orm`): before any
    statement but an INSERT, write what was left for later."""
    db: Db | None = state.session.info.get(_DB)
    if db is not None and not state.is_insert and db.unwritten is not None:
        write_pending(db)


def insert_new(db: Db, row: Any) -> bool:
    """Insert `row` (a new model object) unless a row with any of its unique keys
    exists, in one statement (`INSERT … ON CONFLICT DO NOTHING`): True if it was
    inserted. False if one was there, or is being inserted by a transaction that then
    commits (Postgres waits for it). `row` stays out of the session: what follows in
    the transaction holds the row it needs (`storage.rows.hold`).

    The session's flush would need a savepoint and a read before it to tell the two
    apart without aborting the transaction.
    """
    mapper = inspect(row).mapper
    values = {a.columns[0].name: getattr(row, a.key) for a in mapper.column_attrs}
    values = {name: value for name, value in values.items() if value is not None}
    statement = _insert_new(mapper.local_table, tuple(values), db.dialect)
    inserted = db.execute(statement, {f"new_{name}": v for name, v in values.items()}).first()
    return inserted is not None


@lru_cache(maxsize=64)
def _insert_new(table: Table, columns: tuple[str, ...], dialect: str) -> Any:
    """`insert_new`'s statement for these columns, built once: a statement made anew
    for each row's values cost SQLAlchemy a cache key of them on every call."""
    upsert_dialect = postgresql if dialect == "postgresql" else sqlite
    (key,) = table.primary_key.columns
    values = _binds(table, columns, "new_")
    return upsert_dialect.insert(table).values(values).on_conflict_do_nothing().returning(key)


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
    """An event emitted in a transaction (the row `Tx.write_events` inserts), or read back."""

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

    db: Db
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
        run = held(self.db, run_id)
        if run is not None:
            seq = run.last_seq + 1
            self.write(run, last_seq=seq, progressed_at=now)
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

    def write(self, row: RunRow | StepRow, **values: Any) -> None:
        """Set these columns of a stored row; they are written by key before the next
        statement that is not an INSERT, or with the events at the end.

        On Postgres the columns mostly ride along with the events' INSERT
        (`write_events`), for no round trip of their own. The row takes the values.
        """
        written = {row.columns[name]: value for name, value in values.items()}
        _set_later(self.db, row.table, row.id, written)
        row.take(values.items())

    def write_events(self) -> None:
        """Insert the events emitted so far, with whatever else was left for later: on
        Postgres all in one statement (`write_pending`).

        Events are append-only and nothing reads them back in the transaction, so
        they skip the ORM's unit of work.
        """
        self.db.flush()  # first the objects added the ORM way (a schedule's tick)
        for emitted in self.outbox[self._written :]:
            insert_later(self.db, "event", emitted.row())
        write_pending(self.db)
        self._written = len(self.outbox)


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


def live_payload(run_id: str, type: str, data: dict[str, Any], step: int) -> dict[str, Any]:
    """The message of an event that is not stored (a token delta): no `seq`."""
    return {
        "run_id": run_id,
        "seq": None,
        "type": type,
        "step": step,
        "data": data,
        "at": utcnow().isoformat(),
    }


class Store:
    """The database and the fan-out together."""

    def __init__(self, engine: Engine, fanout: Fanout, observers: Observers = OBSERVERS) -> None:
        self.engine = engine
        self.fanout = fanout
        self.observers = observers

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction that commits on success and then publishes its events."""
        with self.engine.connect() as connection:
            db = Db(connection)
            try:
                tx = Tx(db)
                yield tx
                tx.write_events()
                connection.commit()
            finally:
                db.close()
        payloads = [event_payload(event) for event in tx.outbox]
        self.fanout.publish_many([(payload["run_id"], payload) for payload in payloads])
        for payload in payloads:
            self.observers.notify(self, payload)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only."""
        with Session(self.engine, expire_on_commit=False) as db:
            yield db

    def publish_live(self, run_id: str, type: str, data: dict[str, Any], step: int) -> None:
        """Publish an event that is not stored (a token delta)."""
        self.fanout.publish(run_id, live_payload(run_id, type, data, step))

    def model_history(self, run_id: str, upto: int) -> list[dict[str, Any]]:
        """The run's model.started, .completed and .retracted events with `seq <= upto`."""
        return self._events(_MODEL_HISTORY, {"run_id": run_id, "upto": upto})

    def events_after(self, run_id: str, after: int) -> list[dict[str, Any]]:
        """The run's committed events with `seq > after`, in order."""
        return self._events(_EVENTS_AFTER, {"run_id": run_id, "after": after})

    def _events(self, statement: Executable, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Events as payloads, read as rows: a follower catching up reads them often (twice
        a second on the embedded default), and loading ORM objects cost more than reading."""
        with self.engine.connect() as connection:
            rows = connection.execute(statement, params)
            return [event_payload(Emitted(*row)) for row in rows]


# The followers' reads, built once (building a statement costs a third of running it).
_EVENT_ROWS = select(*(EVENTS.c[name] for name in EVENT_COLUMNS)).where(
    EVENTS.c.run_id == bindparam("run_id")
)
_EVENTS_AFTER = _EVENT_ROWS.where(EVENTS.c.seq > bindparam("after")).order_by(EVENTS.c.seq)
_MODEL_HISTORY = _EVENT_ROWS.where(
    EVENTS.c.seq <= bindparam("upto"), EVENTS.c.type.in_(MODEL_HISTORY)
).order_by(EVENTS.c.seq)
