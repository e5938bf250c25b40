"""Event numbers: 1, 2, 3… per run without gaps or duplicates, committed before published.

Each test runs on the embedded SQLite store and on Postgres (skipped locally when
Postgres is down, failing in CI).
"""

import contextlib
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from storage import Event, Run, Store
from storage.events import MODEL_STARTED, RUN_QUEUED, TOOL_COMPLETED
from storage.models import aware
from storage.rows import lock_run
from tests.stores import new_run  # its `store` fixture comes through conftest

THREADS = 8
EVENTS_PER_THREAD = 12


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


def _seqs(store: Store, run_id: str) -> list[int]:
    return [e["seq"] for e in store.events_after(run_id, 0)]


def _last_seq(store: Store, run_id: str) -> int:
    with Session(store.engine) as db:
        run = db.get(Run, run_id)
        assert run is not None
        return run.last_seq


def test_events_of_one_run_are_numbered_from_one_in_order(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        first = tx.emit(run_id, RUN_QUEUED, {"agent": "demo"})
        second = tx.emit(run_id, MODEL_STARTED, {}, step=1)
    with store.transaction() as tx:
        third = tx.emit(run_id, TOOL_COMPLETED, {"result": "3"}, step=2)
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    events = store.events_after(run_id, 0)
    assert [(e["seq"], e["type"], e["step"]) for e in events] == [
        (1, RUN_QUEUED, None),
        (2, MODEL_STARTED, 1),
        (3, TOOL_COMPLETED, 2),
    ]
    assert events[0]["data"] == {"agent": "demo"}
    assert _last_seq(store, run_id) == 3


def test_each_run_has_its_own_numbering(store):
    one, two = new_run(store), new_run(store)
    with store.transaction() as tx:
        tx.emit(one, RUN_QUEUED, {})
        tx.emit(two, RUN_QUEUED, {})
        tx.emit(one, MODEL_STARTED, {})
    assert _seqs(store, one) == [1, 2]
    assert _seqs(store, two) == [1]


def test_events_after_returns_only_later_events(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        for _ in range(5):
            tx.emit(run_id, MODEL_STARTED, {})
    assert [e["seq"] for e in store.events_after(run_id, 3)] == [4, 5]
    assert store.events_after(run_id, 5) == []


def test_concurrent_appends_to_one_run_are_numbered_without_gaps_or_duplicates(store):
    run_id = new_run(store)
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    emitted: list[int] = []
    lock = threading.Lock()

    def append(worker: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(EVENTS_PER_THREAD):
                with store.transaction() as tx:
                    # Some transactions append two events: their numbers are consecutive.
                    count = 2 if i % 3 == 0 else 1
                    events = [
                        tx.emit(run_id, MODEL_STARTED, {"worker": worker, "i": i})
                        for _ in range(count)
                    ]
                assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + count))
                with lock:
                    emitted.extend(e.seq for e in events)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    total = THREADS * sum(2 if i % 3 == 0 else 1 for i in range(EVENTS_PER_THREAD))
    assert sorted(emitted) == list(range(1, total + 1))
    assert _seqs(store, run_id) == list(range(1, total + 1))
    assert _last_seq(store, run_id) == total


def test_a_rolled_back_transaction_leaves_no_gap(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        tx.emit(run_id, RUN_QUEUED, {})
    with pytest.raises(Boom), store.transaction() as tx:
        assert tx.emit(run_id, MODEL_STARTED, {"doomed": True}).seq == 2
        assert tx.emit(run_id, MODEL_STARTED, {"doomed": True}).seq == 3
        raise Boom
    assert _last_seq(store, run_id) == 1
    with store.transaction() as tx:
        after = tx.emit(run_id, MODEL_STARTED, {"doomed": False})
    assert after.seq == 2
    events = store.events_after(run_id, 0)
    assert [e["seq"] for e in events] == [1, 2]
    assert events[1]["data"] == {"doomed": False}


def test_concurrent_appends_with_rollbacks_leave_no_gaps(store):
    run_id = new_run(store)
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(EVENTS_PER_THREAD):
                with contextlib.suppress(Boom), store.transaction() as tx:  # Boom rolls back
                    tx.emit(run_id, MODEL_STARTED, {"worker": worker, "i": i})
                    if (worker + i) % 2:
                        raise Boom
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    kept = sum(1 for w in range(THREADS) for i in range(EVENTS_PER_THREAD) if not (w + i) % 2)
    events = store.events_after(run_id, 0)
    assert [e["seq"] for e in events] == list(range(1, kept + 1))
    assert all(not (e["data"]["worker"] + e["data"]["i"]) % 2 for e in events)


def test_the_unique_constraint_rejects_a_duplicate_event_number(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        tx.emit(run_id, RUN_QUEUED, {})
    with Session(store.engine) as db:
        db.add(Event(run_id=run_id, seq=1, type=MODEL_STARTED, data={}))
        with pytest.raises(IntegrityError):
            db.commit()
    with Session(store.engine) as db:
        count = db.execute(
            select(func.count()).select_from(Event).where(Event.run_id == run_id)
        ).scalar_one()
    assert count == 1


def test_the_same_number_may_appear_in_different_runs(store):
    one, two = new_run(store), new_run(store)
    with Session(store.engine) as db:
        db.add(Event(run_id=one, seq=1, type=RUN_QUEUED, data={}))
        db.add(Event(run_id=two, seq=1, type=RUN_QUEUED, data={}))
        db.commit()


def test_events_are_published_only_after_commit(store):
    run_id = new_run(store)
    with store.fanout.subscribe(run_id) as live:
        with store.transaction() as tx:
            tx.emit(run_id, RUN_QUEUED, {"agent": "demo"})
            tx.emit(run_id, MODEL_STARTED, {}, step=1)
            assert live.get(timeout=0.05) is None
        first, second = live.get(timeout=1), live.get(timeout=1)
        assert live.get(timeout=0.05) is None
    assert (first["seq"], first["type"], first["data"]) == (1, RUN_QUEUED, {"agent": "demo"})
    assert (second["seq"], second["type"], second["step"]) == (2, MODEL_STARTED, 1)
    assert [first, second] == store.events_after(run_id, 0)


def test_a_transaction_that_raised_publishes_nothing(store):
    run_id = new_run(store)
    with store.fanout.subscribe(run_id) as live:
        with pytest.raises(Boom), store.transaction() as tx:
            tx.emit(run_id, RUN_QUEUED, {})
            tx.emit(run_id, MODEL_STARTED, {})
            raise Boom
        assert live.get(timeout=0.1) is None
        with store.transaction() as tx:
            tx.emit(run_id, MODEL_STARTED, {"after": True})
        message = live.get(timeout=1)
        assert live.get(timeout=0.05) is None
    assert (message["seq"], message["data"]) == (1, {"after": True})


def test_live_only_events_are_never_stored(store):
    run_id = new_run(store)
    with pytest.raises(AssertionError, match=r"model\.delta"), store.transaction() as tx:
        tx.emit(run_id, "model.delta", {"text": "hi"})
    assert store.events_after(run_id, 0) == []
    with store.fanout.subscribe(run_id) as live:
        store.publish_live(run_id, "model.delta", {"text": "hi"}, 1)
        message = live.get(timeout=1)
    assert message is not None
    assert (message["seq"], message["type"], message["data"]) == (
        None,
        "model.delta",
        {"text": "hi"},
    )
    assert store.events_after(run_id, 0) == []


def _progressed_at(store: Store, run_id: str):
    with Session(store.engine) as db:
        run = db.get(Run, run_id)
        assert run is not None and run.progressed_at is not None
        return aware(run.progressed_at)


def test_a_locked_run_numbers_its_events_and_writes_its_counter_with_them(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        lock_run(tx.db, run_id)
        only = tx.emit(run_id, RUN_QUEUED, {})
    with store.transaction() as tx:
        lock_run(tx.db, run_id)
        tx.emit(run_id, MODEL_STARTED, {}, step=1)
        last = tx.emit(run_id, TOOL_COMPLETED, {}, step=2)
    assert only.seq == 1 and _seqs(store, run_id) == [1, 2, 3]
    assert _last_seq(store, run_id) == 3
    assert _progressed_at(store, run_id) == last.created_at


def test_a_run_locked_again_after_an_event_keeps_its_count(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        lock_run(tx.db, run_id)
        tx.emit(run_id, RUN_QUEUED, {})
        again = lock_run(tx.db, run_id)  # read fresh: it must not lose the count above
        assert again is not None and again.last_seq == 1
        tx.emit(run_id, MODEL_STARTED, {}, step=1)
    assert _seqs(store, run_id) == [1, 2]
    assert _last_seq(store, run_id) == 2


def test_a_locked_run_that_changed_writes_its_change_and_its_counter(store):
    run_id = new_run(store)
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        tx.write(run, status="running")
        tx.emit(run_id, MODEL_STARTED, {}, step=1)
    with Session(store.engine) as db:
        stored = db.get(Run, run_id)
        assert stored is not None and (stored.status, stored.last_seq) == ("running", 1)
    assert _seqs(store, run_id) == [1]


def test_a_rolled_back_locked_run_keeps_neither_its_events_nor_its_count(store):
    run_id = new_run(store)
    with pytest.raises(Boom), store.transaction() as tx:
        lock_run(tx.db, run_id)
        tx.emit(run_id, RUN_QUEUED, {})
        raise Boom
    with store.transaction() as tx:
        lock_run(tx.db, run_id)
        tx.emit(run_id, MODEL_STARTED, {})
    assert _seqs(store, run_id) == [1]
    assert _last_seq(store, run_id) == 1
