"""The connection pool: a connection the server closed is replaced at checkout; its size,
timeout and prepared statements are settings; a pool that stays full is an outage; its
cursors describe a result only when the description is read."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, literal, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from storage import make_engine
from storage.db import DescribingCursor, normalise_url
from tasks.records import DATABASE_DOWN, recorded
from tasks.runtime import runtime_for
from tasks.settings import Settings
from tests.conftest import PG_ADMIN

pytestmark = pytest.mark.services


def _backend_of(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    """End a backend, as a Postgres restart or an idle timeout would, and wait for it."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    time.sleep(0.05)  # the FATAL and the close reach the client's socket


def test_a_pooled_connection_whose_backend_was_terminated_is_replaced_at_checkout(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    first = _backend_of(engine)

    _terminate(first)

    with engine.connect() as connection:  # no error: the pool opened a new connection
        again = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
    assert again != first
    engine.dispose()


def test_without_the_checkout_check_the_same_connection_fails_its_next_statement(
    database_url: str,
) -> None:
    # The control for the test above: a plain pool hands the dead connection out.
    engine = create_engine(normalise_url(database_url), pool_size=1)
    _terminate(_backend_of(engine))

    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    engine.dispose()


def _prepared_on(connection: Any) -> int:
    """How many statements this connection's backend holds prepared."""
    return int(connection.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one())


@pytest.mark.parametrize(("prepared", "expected"), [(True, 1), (False, 0)])
def test_prepared_statements_can_be_turned_off_for_pgbouncer(
    database_url: str, prepared: bool, expected: int
) -> None:
    engine = make_engine(database_url, pool_size=1, prepared_statements=prepared)

    with engine.connect() as connection:
        for _ in range(6):  # psycopg prepares a statement on its fifth use
            connection.execute(text("SELECT 1 + 1")).scalar_one()
        assert _prepared_on(connection) == expected
    engine.dispose()


def test_a_pool_holds_its_size_and_overflow_and_a_checkout_beyond_them_times_out(
    database_url: str,
) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=1, pool_timeout=0.2)

    with engine.connect(), engine.connect():
        began = time.monotonic()
        with pytest.raises(PoolTimeout):
            engine.connect()  # raises before it returns a connection
        waited = time.monotonic() - began
    assert 0.2 <= waited < 5
    engine.dispose()


def test_a_pool_that_stays_full_counts_as_the_database_being_down_so_a_step_retries(
    database_url: str,
) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    held = engine.connect()  # a stalled transaction elsewhere holds the only connection
    threading.Timer(0.5, held.close).start()

    def write() -> int:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT 7")).scalar_one())

    # `recorded` retries a result's write in place while the database is down: it waits
    # for the connection to come free instead of failing the step.
    assert recorded(write, patience=10) == 7
    # And what the task shells retry on, with backoff.
    with engine.connect(), pytest.raises(DATABASE_DOWN):
        engine.connect()
    engine.dispose()


def test_a_runtime_builds_its_pool_from_the_settings(database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        database_pool_size=3,
        database_max_overflow=0,
        database_prepared_statements=False,
    )
    engine = runtime_for(settings).store.engine

    assert engine.pool.size() == 3  # type: ignore[attr-defined]
    with engine.connect() as connection:
        for _ in range(6):
            connection.execute(text("SELECT 1 + 1")).scalar_one()
        assert _prepared_on(connection) == 0


def _described(cursor: Any) -> list[tuple[str, int]]:
    return [(column.name, column.type_code) for column in cursor.description]


def test_a_cursor_describes_its_result_as_psycopg_does(database_url: str) -> None:
    statement = "SELECT 1 AS one, 'two'::text AS two, now() AS three"
    plain = psycopg.connect(normalise_url(database_url).replace("+psycopg", ""))
    engine = make_engine(database_url, pool_size=1)
    with engine.connect() as connection, plain:
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        expected = plain.execute(statement)

        cursor.execute(statement)

        assert isinstance(cursor, DescribingCursor)
        assert _described(cursor) == _described(expected)
        assert len(cursor.description) == 3
        assert cursor.description[-1].name == "three"
        assert [c.name for c in cursor.description[1:]] == ["two", "three"]
        cursor.execute("SELECT")  # rows of no columns: described, as empty
        assert cursor.description is not None and list(cursor.description) == []
        cursor.execute("CREATE TEMPORARY TABLE t (x int)")  # no rows: no description
        assert cursor.description is None
    engine.dispose()


def test_a_description_read_after_its_cursor_moved_on_is_refused(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SELECT 1 AS one")
        first = cursor.description
        cursor.execute("SELECT 2 AS other")

        with pytest.raises(RuntimeError, match="moved to another result"):
            first[0]
    engine.dispose()


def test_a_statement_run_before_makes_no_columns_for_its_description(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[int] = []

    class Counted(psycopg.Column):
        def __init__(self, cursor: Any, index: int) -> None:
            made.append(index)
            super().__init__(cursor, index)

    monkeypatch.setattr(psycopg, "Column", Counted)
    engine = make_engine(database_url, pool_size=1)
    statement = select(literal(1).label("one"), literal(2).label("two"))
    with engine.connect() as connection:  # its first use: SQLAlchemy's own queries
        made.clear()
        assert connection.execute(statement).all() == [(1, 2)]
        assert made == [0, 1]  # read once, and their shape cached with the statement
        made.clear()
        assert connection.execute(statement).all() == [(1, 2)]
        assert connection.execute(statement).mappings().one() == {"one": 1, "two": 2}
    assert made == []
    engine.dispose()
