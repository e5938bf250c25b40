"""A `Store` on SQLite and on Postgres, for the tests of what a transaction writes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from storage import LocalFanout, Run, Store, Thread, make_engine, upgrade


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on a migrated database: SQLite in a temporary folder, or the test Postgres."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        upgrade(engine)
    else:
        engine = make_engine(request.getfixturevalue("database_url"))
    yield Store(engine, LocalFanout())
    engine.dispose()


def new_run(store: Store, **fields: Any) -> str:
    """A run (queued, of the demo agent, unless `fields` say otherwise) and its thread."""
    run_id = str(uuid.uuid4())
    with Session(store.engine) as db:
        db.add(Thread(id=run_id))
        db.flush()
        db.add(
            Run(**{"agent": "demo", "input": "hello", **fields, "id": run_id, "thread_id": run_id})
        )
        db.commit()
    return run_id
