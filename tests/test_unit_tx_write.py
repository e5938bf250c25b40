"""`Tx.write`: a row's columns written in one UPDATE, on SQLite and on Postgres."""

import uuid

import pytest
from sqlalchemy import event
from sqlmodel import Session

from storage import Run, Store, Thread
from storage.store import lock_run
from tests.stores import new_run  # its `store` fixture comes through conftest


def _statements(store: Store) -> list[str]:
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_written_columns_are_stored_with_one_update_and_nothing_is_flushed_after(store):
    run_id = new_run(store)
    seen = _statements(store)
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        del seen[:]
        tx.write(run, status="running", usage={"input_tokens": 3}, meta={"k": "v"})
        assert (run.status, run.usage, run.meta) == ("running", {"input_tokens": 3}, {"k": "v"})
    updates = [s for s in seen if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1  # the commit's flush found nothing left to write
    with Session(store.engine) as db:
        stored = db.get(Run, run_id)
        assert stored is not None
        assert (stored.status, stored.usage, stored.meta) == (
            "running",
            {"input_tokens": 3},
            {"k": "v"},
        )


def test_a_column_set_after_a_write_is_still_flushed(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        tx.write(run, status="running")
        run.error = "set the ordinary way"
    with Session(store.engine) as db:
        stored = db.get(Run, run_id)
        assert stored is not None
        assert (stored.status, stored.error) == ("running", "set the ordinary way")


def test_a_write_rolls_back_with_its_transaction(store):
    run_id = new_run(store)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        tx.write(run, status="failed")
        raise RuntimeError("roll back")
    with Session(store.engine) as db:
        stored = db.get(Run, run_id)
        assert stored is not None and stored.status == "queued"


def test_a_row_not_yet_stored_takes_the_values_and_is_inserted(store):
    run_id = str(uuid.uuid4())
    with store.transaction() as tx:
        tx.db.add(Thread(id=run_id))
        tx.db.flush()  # no relationship tells the session which table goes first
        run = Run(id=run_id, agent="demo", input="hello", thread_id=run_id)
        tx.write(run, status="running")
    with Session(store.engine) as db:
        stored = db.get(Run, run_id)
        assert stored is not None and stored.status == "running"
