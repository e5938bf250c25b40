"""`Tx.write`: a row's columns written in one UPDATE, on SQLite and on Postgres, and on
Postgres in the events' INSERT when nothing reads the row before the transaction ends."""

from dataclasses import FrozenInstanceError

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from providers.types import Message
from storage import Event, Run, Step, Store, ThreadMessage
from storage.rows import lock_run, lock_run_and_round, lock_run_and_steps
from tasks.records import add_steps, append, thread_history
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


def test_a_held_row_refuses_a_column_set_any_way_but_tx_write(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        with pytest.raises(FrozenInstanceError):
            run.error = "set the ordinary way"  # type: ignore[misc]
        tx.write(run, status="running")
    assert _stored(store, run_id).error is None


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


def _writes(seen: list[str]) -> list[str]:
    """The statements that write: UPDATE, INSERT, or a WITH whose CTEs write."""
    return [
        s.lstrip().split()[0].upper()
        for s in seen
        if not s.lstrip().upper().startswith(("SELECT", "BEGIN"))
    ]


def _stored(store: Store, run_id: str) -> Run:
    with Session(store.engine) as db:
        stored = db.get(Run, run_id)
        assert stored is not None
        return stored


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
@pytest.mark.services
def test_on_postgres_a_step_s_whole_record_is_written_in_one_statement(store):
    run_id = new_run(store, status="running")
    with store.transaction() as tx:
        add_steps(tx.db, run_id, [(1, None)])
    seen = _statements(store)
    with store.transaction() as tx:
        found = lock_run_and_steps(tx.db, run_id, 1)
        assert found is not None
        (run, [step]) = found
        del seen[:]
        tx.write(step, status="succeeded", output={"content": "ok"})
        append(tx.db, run, Message.text("assistant", "ok"))
        add_steps(tx.db, run_id, [(2, None)])
        tx.write(run, usage={"input_tokens": 7})
        tx.emit(run_id, "model.completed", {}, 1)
        tx.write(run, status="succeeded", result="ok")  # the same row: merged
        tx.emit(run_id, "run.succeeded", {})
    assert len(_writes(seen)) == 1, seen
    assert "WITH" in seen[0] and "INSERT INTO stepwise_events" in seen[0]
    stored = _stored(store, run_id)
    assert (stored.status, stored.result, stored.usage, stored.last_seq) == (
        "succeeded",
        "ok",
        {"input_tokens": 7},
        2,
    )
    with Session(store.engine) as db:
        events = db.exec(select(Event.seq, Event.type).where(Event.run_id == run_id)).all()
        assert sorted(events) == [(1, "model.completed"), (2, "run.succeeded")]
        steps = db.exec(select(Step).where(Step.run_id == run_id).order_by(Step.number)).all()
        assert [(s.number, s.status, s.output) for s in steps] == [
            (1, "succeeded", {"content": "ok"}),
            (2, "pending", None),
        ]
        messages = db.exec(select(ThreadMessage).where(ThreadMessage.thread_id == run_id)).all()
        assert [(m.position, m.role) for m in messages] == [(1, "assistant")]


def test_a_read_after_a_write_sees_it(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        tx.write(run, status="running", error="written before the read")
        found = tx.db.execute(select(Run.status, Run.error).where(Run.id == run_id)).one()
        assert tuple(found) == ("running", "written before the read")
        again = lock_run(tx.db, run_id)  # read fresh: it must not lose the write
        assert again is not None and again.status == "running"
    assert _stored(store, run_id).status == "running"


def test_writes_wait_for_the_end_and_a_row_written_twice_takes_the_later_values(store):
    run_id = new_run(store, status="running")
    seen = _statements(store)
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        del seen[:]
        tx.write(run, error="first")
        add_steps(tx.db, run_id, [(1, None)])
        tx.write(run, error="second")  # the same row, one UPDATE: the later value
    postgres = store.engine.dialect.name == "postgresql"
    assert _writes(seen) == (["WITH"] if postgres else ["INSERT", "UPDATE"])
    assert _stored(store, run_id).error == "second"


def test_writes_and_events_roll_back_together(store):
    run_id = new_run(store, status="running")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        tx.write(run, status="failed")
        tx.emit(run_id, "run.failed", {})
        tx.write_events()
        raise RuntimeError("roll back")
    stored = _stored(store, run_id)
    assert (stored.status, stored.last_seq) == ("running", 0)


def test_rows_inserted_later_are_read_back_in_their_transaction(store):
    run_id = new_run(store, status="running")
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        add_steps(tx.db, run_id, [(1, None), (2, None)])
        append(tx.db, run, Message.text("user", "hello"))
        found = lock_run_and_round(tx.db, run_id, 3)
        assert found is not None and [s.number for s in found[1]] == [1, 2]
        assert [m.role for m in thread_history(tx.db, run_id)] == ["user"]


def test_a_steps_reads_and_writes_begin_no_orm_session(store):
    run_id = new_run(store, status="running")
    said = (Message.text("user", "two keys?"), Message.text("assistant", "one moment"))
    begun: list[Session] = []
    listener = lambda session, *_: begun.append(session)  # noqa: E731
    event.listen(Session, "after_begin", listener)
    try:
        with store.transaction() as tx:
            run = lock_run(tx.db, run_id)
            assert run is not None
            for message in said:
                append(tx.db, run, message)
            add_steps(tx.db, run_id, [(1, None)])
            tx.write(run, status="running")
            tx.emit(run_id, "run.started", {})
        with store.transaction() as tx:
            found = lock_run_and_round(tx.db, run_id, 2)
            assert found is not None and [s.number for s in found[1]] == [1]
            assert thread_history(tx.db, run_id) == said
    finally:
        event.remove(Session, "after_begin", listener)
    assert begun == []


def test_messages_appended_in_one_transaction_take_positions_in_turn(store):
    run_id = new_run(store, status="running")
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        for role in ("user", "assistant", "user"):
            append(tx.db, run, Message.text(role, role))
        tx.emit(run_id, "run.note", {})
    with Session(store.engine) as db:
        messages = db.exec(
            select(ThreadMessage.position, ThreadMessage.role)
            .where(ThreadMessage.thread_id == run_id)
            .order_by(ThreadMessage.position)
        ).all()
        assert [tuple(m) for m in messages] == [(1, "user"), (2, "assistant"), (3, "user")]
