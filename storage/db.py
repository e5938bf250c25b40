"""Engines and schema migrations (Alembic)."""

from __future__ import annotations

import select
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import pq
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaOutOfDate(RuntimeError):
    """The database is not at the newest migration."""


def normalise_url(url: str) -> str:
    """Use the psycopg 3 driver for plain `postgresql://` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 20,
    pool_timeout: float = 30.0,
    prepared_statements: bool = True,
) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and foreign keys.

    On Postgres: a pool of `pool_size` connections and `max_overflow` more while it is
    busy; a checkout waits up to `pool_timeout` seconds for one. psycopg prepares a
    statement on its fifth use on a connection; `prepared_statements=False` never does,
    for PgBouncer's transaction pooling before 1.21, which cannot keep them.
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"cursor_factory": DescribingCursor}
    if not prepared_statements:
        connect_args["prepare_threshold"] = None
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        connect_args=connect_args,
    )
    event.listen(engine, "checkout", _discard_if_closed)
    return engine


# A result with rows, as psycopg's own `description` tells them.
_TUPLES = frozenset(
    {pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE, pq.ExecStatus.TUPLES_CHUNK}
)


class DescribingCursor(psycopg.Cursor[Any]):
    """psycopg's cursor, whose `description` makes its columns only when they are read.

    SQLAlchemy reads `description` after every statement, but of a statement it has run
    before it only asks whether there is one: the result's shape is cached with the
    compiled statement. psycopg makes a `Column` for every column on every read (its
    name decoded, its type looked up): 26 for the read that locks a run and its steps,
    about 7% of a step's CPU in process.
    """

    @property
    def description(self) -> Sequence[psycopg.Column] | None:  # type: ignore[override]
        """The result's columns, as psycopg's `description`; None if it has no rows."""
        found = self.pgresult
        if found is None or not (found.nfields or found.status in _TUPLES):
            return None
        return _Columns(self, found)


class _Columns(Sequence[psycopg.Column]):
    """A result's `psycopg.Column`s, made on first use."""

    __slots__ = ("_cursor", "_made", "_result")

    def __init__(self, cursor: DescribingCursor, result: pq.abc.PGresult) -> None:
        self._cursor, self._result = cursor, result
        self._made: list[psycopg.Column] | None = None

    def _columns(self) -> list[psycopg.Column]:
        if self._made is None:
            if self._cursor.pgresult is not self._result:
                raise RuntimeError("a description read after its cursor moved to another result")
            self._made = [psycopg.Column(self._cursor, i) for i in range(self._result.nfields)]
        return self._made

    @overload
    def __getitem__(self, index: int) -> psycopg.Column: ...
    @overload
    def __getitem__(self, index: slice) -> list[psycopg.Column]: ...
    def __getitem__(self, index: int | slice) -> psycopg.Column | list[psycopg.Column]:
        return self._columns()[index]

    def __len__(self) -> int:
        return self._result.nfields

    def __iter__(self) -> Iterator[psycopg.Column]:
        return iter(self._columns())


def _discard_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """At checkout, replace a pooled connection the server has closed.

    An idle connection has nothing to read unless the server said something on its
    own: the FATAL it sends before closing (a restart, a terminated backend, an idle
    timeout), or the close itself. So a readable socket means the connection is gone
    (or, rarely, carries a notice), and the pool opens a new one. This takes one
    poll() instead of the round trip of a pre-ping, which every transaction paid
    for. What it cannot see is a server that vanished without closing: a step then
    fails on its first statement and retries, as it does for any database error.
    """
    if dbapi_connection.closed or _readable(dbapi_connection.fileno()):
        raise DisconnectionError("the server closed this pooled connection")


def _readable(fd: int) -> bool:
    """True if the socket has data (or its end) waiting; poll() takes any fd number."""
    if hasattr(select, "poll"):  # gevent's monkey-patching removes it; select() serves then
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision` (the newest by default)."""
    command.upgrade(_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision this code ships."""
    return ScriptDirectory.from_config(_config(create_engine("sqlite://"))).get_current_head()


def check_schema(engine: Engine) -> None:
    """Raise `SchemaOutOfDate` unless the database is at the newest migration."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing'}, this code needs {head}: "
            "run `stepwise db upgrade`"
        )
