"""Locking a run with its steps in one statement (`locked_step`, `locked_run_steps`).

On Postgres what they return after waiting for another transaction's lock is what
that transaction committed: the rows they lock are re-read, and a step inserted
meanwhile is read again under the lock.
"""

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from storage import Step, Store, Tx
from storage.rows import lock_run, lock_run_and_steps, steps_of
from tasks.errors import RunNotFound
from tasks.records import add_steps, locked_run_steps, locked_step
from tests.stores import new_run  # its `store` fixture comes through conftest

on_postgres = pytest.mark.parametrize("store", ["postgres"], indirect=True)


def _run_with_steps(store: Store, count: int = 1) -> str:
    run_id = new_run(store, status="running")
    with store.transaction() as tx:
        add_steps(tx.db, run_id, [(n, None) for n in range(1, count + 1)])
    return run_id


def _read_behind(
    store: Store, run_id: str, holder: Callable[[Tx], None], read: Callable[[Tx], object]
) -> object:
    """What `read` returns in a transaction that waits for the run's lock, held by a
    transaction that does `holder` and commits only once `read` is waiting."""
    holding, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def first() -> None:
        with store.transaction() as tx:
            lock_run(tx.db, run_id)
            holder(tx)
            holding.set()
            release.wait(10)

    def second() -> None:
        with store.transaction() as tx:
            seen.append(read(tx))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert holding.wait(10)
    threads[1].start()
    threads[1].join(0.5)
    assert threads[1].is_alive(), "the second transaction must wait for the run's lock"
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(seen) == 1
    return seen[0]


def _take_step_1(run_id: str) -> Callable[[Tx], None]:
    def take(tx: Tx) -> None:
        (step,) = steps_of(tx.db, run_id, [1])
        tx.write(step, status="running", attempts=1, task_id="first-copy")

    return take


@pytest.mark.services
@on_postgres
def test_a_step_locked_after_waiting_is_read_as_the_holder_committed_it(store):
    run_id = _run_with_steps(store)

    def read(tx: Tx) -> tuple[str, str | None]:
        _, step = locked_step(tx.db, run_id, 1)
        return step.status, step.task_id

    assert _read_behind(store, run_id, _take_step_1(run_id), read) == ("running", "first-copy")


@pytest.mark.services
@on_postgres
def test_a_run_s_steps_locked_after_waiting_are_read_as_the_holder_committed_them(store):
    run_id = _run_with_steps(store, 2)

    def read(tx: Tx) -> list[tuple[int, str]]:
        _, steps = locked_run_steps(tx.db, run_id, 2)
        return [(s.number, s.status) for s in steps]

    assert _read_behind(store, run_id, _take_step_1(run_id), read) == [
        (1, "running"),
        (2, "pending"),
    ]


@pytest.mark.services
@on_postgres
def test_a_step_inserted_while_waiting_for_the_lock_is_found(store):
    run_id = _run_with_steps(store)

    def read(tx: Tx) -> list[int]:
        _, steps = locked_run_steps(tx.db, run_id, 2)
        return [s.number for s in steps]

    def insert_step_2(tx: Tx) -> None:
        add_steps(tx.db, run_id, [(2, None)])

    assert _read_behind(store, run_id, insert_step_2, read) == [1, 2]


@pytest.mark.services
@on_postgres
def test_a_locked_step_s_row_is_locked_too(store):
    run_id = _run_with_steps(store)
    with store.transaction() as tx:
        assert lock_run_and_steps(tx.db, run_id, 1) is not None
        with store.engine.connect() as other:
            other.exec_driver_sql("SET lock_timeout = '100ms'")
            with pytest.raises(Exception, match="lock timeout"):
                other.exec_driver_sql(
                    "UPDATE stepwise_steps SET attempts = 5 WHERE run_id = %(r)s", {"r": run_id}
                )
    with Session(store.engine) as db:
        assert db.exec(select(Step.attempts).where(Step.run_id == run_id)).one() == 0


def test_locked_step_says_which_of_the_run_and_the_step_is_missing(store):
    run_id = _run_with_steps(store)
    with store.transaction() as tx, pytest.raises(LookupError, match="has no step 2"):
        locked_step(tx.db, run_id, 2)
    with store.transaction() as tx, pytest.raises(RunNotFound):
        locked_step(tx.db, "00000000-0000-0000-0000-000000000000", 1)
    with store.transaction() as tx, pytest.raises(RunNotFound):
        locked_run_steps(tx.db, "00000000-0000-0000-0000-000000000000", 1)


def test_a_run_without_steps_is_locked_with_none(store):
    run_id = new_run(store, status="running")
    with store.transaction() as tx:
        run, steps = locked_run_steps(tx.db, run_id, 1)
        assert (run.id, steps) == (run_id, [])


def test_an_emitted_count_survives_locking_the_run_and_its_steps_again(store):
    run_id = _run_with_steps(store)
    with store.transaction() as tx:
        lock_run(tx.db, run_id)
        tx.emit(run_id, "run.note", {})
        run, _ = locked_step(tx.db, run_id, 1)  # read fresh: the count above is written first
        assert run.last_seq == 1
        tx.emit(run_id, "run.note", {})
        run, _ = locked_run_steps(tx.db, run_id, 1)
        assert run.last_seq == 2
        tx.emit(run_id, "run.note", {})
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        assert run.last_seq == 3


def test_a_run_locked_with_its_steps_is_read_without_its_input(store):
    """The run's columns come once per step's row: its input, of any size, is not one."""
    run_id = new_run(store, status="running", input="a long document. " * 2000)
    with store.transaction() as tx:
        add_steps(tx.db, run_id, [(1, None), (2, None), (3, None)])
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        with store.transaction() as tx:
            run, steps = locked_run_steps(tx.db, run_id, 3)
            assert (run.status, [s.number for s in steps]) == ("running", [1, 2, 3])
            with pytest.raises(AttributeError, match="input"):
                _ = run.input  # a step that reads it raises: no silent read per step
    finally:
        event.remove(store.engine, "before_cursor_execute", note)
    (read,) = [s for s in sent if "JOIN stepwise_steps" in s]
    assert "stepwise_runs.input" not in read
