"""The connection pool: a connection the server closed is replaced at checkout."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from storage import make_engine
from storage.db import normalise_url
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
