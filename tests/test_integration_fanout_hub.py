"""The fan-out hub: one Redis pub/sub connection per process, however many followers.

Stored events go through a real `Store` (the session's Postgres) and the messages through
real Redis: the machine's, or a private one where a test counts connections or restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import pytest
import redis

from storage import RedisFanout, Run, Store, make_engine
from storage.events import MODEL_STARTED, RUN_QUEUED, RUN_STARTED, RUN_SUCCEEDED, TOOL_STARTED
from storage.fanout import INBOX_LIMIT, LOST, AsyncSubscription, Subscription
from storage.follow import afollow, follow
from storage.keys import run_channel
from tests.conftest import REDIS_URL
from tests.stores import new_run
from tests.test_integration_support import wait_until

if TYPE_CHECKING:
    from tests.instances import RedisInstance

pytest_plugins = ["tests.instances"]
pytestmark = pytest.mark.services

Event = dict[str, Any]
WAIT = 20.0  # seconds a follower waits for a message that is surely coming (a failing test)


class RecordingFanout(RedisFanout):
    """`RedisFanout` that gives followers inboxes of `limit` messages (unless they ask for a
    size) and records everything each inbox hands its follower."""

    def __init__(self, url: str, limit: int = INBOX_LIMIT) -> None:
        super().__init__(url)
        self.limit = limit
        self.handed: dict[str, list[list[Event | None]]] = {}  # run → one list per inbox
        self._record_lock = threading.Lock()

    @contextmanager
    def subscribe(self, run_id: str, limit: int | None = None) -> Iterator[Subscription]:
        with super().subscribe(run_id, self.limit if limit is None else limit) as inbox:
            handed = self._inbox(run_id)
            get = inbox.get

            def recording(timeout: float) -> Event | None:
                message = get(timeout)
                handed.append(message)
                return message

            inbox.get = recording  # type: ignore[method-assign]
            yield inbox

    @asynccontextmanager
    async def asubscribe(
        self, run_id: str, limit: int | None = None
    ) -> AsyncIterator[AsyncSubscription]:
        async with super().asubscribe(run_id, self.limit if limit is None else limit) as inbox:
            handed = self._inbox(run_id)
            get = inbox.get

            async def recording(timeout: float) -> Event | None:
                message = await get(timeout)
                handed.append(message)
                return message

            inbox.get = recording  # type: ignore[method-assign]
            yield inbox

    def _inbox(self, run_id: str) -> list[Event | None]:
        handed: list[Event | None] = []
        with self._record_lock:
            self.handed.setdefault(run_id, []).append(handed)
        return handed

    def every_inbox(self) -> list[list[Event | None]]:
        """What each inbox handed its follower, in the order they subscribed."""
        with self._record_lock:
            return [h for lists in self.handed.values() for h in lists]


@pytest.fixture
def engine(database_url: str) -> Iterator[Any]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def emit(store: Store, run_id: str, kind: str, step: int | None = None) -> int:
    """Commit one event (ending the run if it is terminal), then publish it; its seq."""
    with store.transaction() as tx:
        if kind == RUN_SUCCEEDED:
            run = tx.db.orm.get(Run, run_id)
            assert run is not None
            run.status = "succeeded"
            tx.db.orm.add(run)
        return tx.emit(run_id, kind, {}, step).seq


def seqs(events: list[Event]) -> list[int]:
    return [e["seq"] for e in events if e["seq"] is not None]


@contextmanager
def event_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An asyncio loop running in a thread of its own, for followers that use asyncio."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def pubsub_clients(url: str) -> list[dict[str, Any]]:
    """The server's connections that listen to at least one channel or pattern."""
    admin = redis.Redis.from_url(url)
    try:
        return [c for c in admin.client_list() if int(c.get("sub", 0)) or int(c.get("psub", 0))]
    finally:
        admin.close()


# One connection for every follower ------------------------------------------------------------


def test_thirty_followers_of_ten_runs_in_one_process_share_one_pubsub_connection(
    private_redis: RedisInstance,
):
    fanout = RedisFanout(private_redis.url)
    runs = [str(uuid.uuid4()) for _ in range(10)]
    subscribed = threading.Barrier(31, timeout=WAIT)
    received: dict[int, Event | None] = {}
    confirmed: dict[int, bool] = {}

    def listen(i: int) -> None:
        with fanout.subscribe(runs[i % 10]) as inbox:
            confirmed[i] = inbox.live
            subscribed.wait()
            received[i] = inbox.get(timeout=WAIT)

    followers = [threading.Thread(target=listen, args=(i,)) for i in range(30)]
    for follower in followers:
        follower.start()
    subscribed.wait()
    try:
        listening = pubsub_clients(private_redis.url)
        admin = redis.Redis.from_url(private_redis.url)
        counts = dict(admin.pubsub_numsub(*(run_channel(r) for r in runs)))
        for run_id in runs:
            fanout.publish(run_id, {"seq": 1, "run_id": run_id})
    finally:
        for follower in followers:
            follower.join(WAIT)

    assert all(confirmed[i] for i in range(30))
    assert len(listening) == 1, listening
    assert int(listening[0]["sub"]) == 10 + 1  # ten runs, and the hub's own wake-up channel
    assert counts == {run_channel(r).encode(): 1 for r in runs}
    assert {i: m and m["run_id"] for i, m in received.items()} == {
        i: runs[i % 10] for i in range(30)
    }
    # The last follower of a run gone, the hub leaves its channel.
    wait_until("the hub to leave every run's channel", lambda: fanout.channels == 0)
    wait_until(
        "Redis to forget the runs' subscribers",
        lambda: not any(n for _, n in admin.pubsub_numsub(*(run_channel(r) for r in runs))),
    )
    assert len(pubsub_clients(private_redis.url)) == 1  # the connection stays for the next one
    admin.close()
    fanout.close()


# Overflow ---------------------------------------------------------------------------------------


def test_an_inbox_that_overflows_hands_its_follower_lost_then_the_oldest_messages_it_kept():
    fanout = RedisFanout(REDIS_URL)
    run_id, marker_run = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        with fanout.subscribe(run_id, limit=4) as small, fanout.subscribe(marker_run) as probe:
            for seq in range(1, 11):
                fanout.publish(run_id, {"seq": seq})
            fanout.publish(marker_run, {"seq": 1})
            # The hub hands out messages in the order Redis sent them, each to every inbox
            # before the next: once the probe has the marker, `small` has had all ten.
            assert probe.get(timeout=WAIT) == {"seq": 1}
            assert small.get(timeout=WAIT) is LOST
            assert [small.get(timeout=WAIT) for _ in range(4)] == [{"seq": s} for s in (1, 2, 3, 4)]
            assert small.get(timeout=0) is None
    finally:
        fanout.close()


def test_a_follower_whose_inbox_overflows_reads_what_it_lost_from_the_database_once(engine):
    fanout = RecordingFanout(REDIS_URL, limit=4)
    store = Store(engine, fanout)
    run_id = new_run(store, agent="hub", input="listen", status="running")
    emit(store, run_id, RUN_QUEUED)
    emit(store, run_id, RUN_STARTED)
    try:
        with fanout.subscribe(run_id, limit=INBOX_LIMIT) as probe:
            stream = follow(store, run_id)
            shown = [next(stream)]  # subscribed, and reading the database
            for step in range(1, 15):
                emit(store, run_id, MODEL_STARTED, step)
                emit(store, run_id, TOOL_STARTED, step)
            last = emit(store, run_id, RUN_SUCCEEDED)
            wait_until("the probe to get the last message", lambda: _saw(probe, last))
            shown.extend(stream)  # the follower had read nothing while 29 messages came
    finally:
        fanout.close()

    assert seqs(shown) == list(range(1, last + 1))
    assert shown[-1]["type"] == RUN_SUCCEEDED
    _, follower = fanout.handed[run_id]  # the probe's, then the follower's
    assert follower[0] is LOST


def _saw(probe: Subscription, seq: int) -> bool:
    message = probe.get(timeout=WAIT)
    return message is not None and message.get("seq") == seq


# Redis restarts ---------------------------------------------------------------------------------


def test_followers_started_before_a_redis_restart_see_every_stored_event_once_after_it(
    engine, private_redis: RedisInstance
):
    fanout = RecordingFanout(private_redis.url)
    store = Store(engine, fanout)
    runs = [new_run(store, agent="hub", input="listen", status="running") for _ in range(3)]
    for run_id in runs:
        emit(store, run_id, RUN_QUEUED)
        emit(store, run_id, RUN_STARTED)
    shown: dict[tuple[str, str], list[Event]] = {(r, k): [] for r in runs for k in ("s", "a")}

    def read(run_id: str) -> None:
        shown[run_id, "s"].extend(follow(store, run_id, timeout=60))

    async def aread(run_id: str) -> None:
        async for e in afollow(store, run_id, timeout=60):
            shown[run_id, "a"].append(e)

    def everyone_saw(seq: int) -> bool:
        return all(seq in seqs(s) for s in shown.values())

    def handed_live(seq: int) -> bool:
        return all(
            any(m is not None and m is not LOST and m.get("seq") == seq for m in handed)
            for handed in fanout.every_inbox()
        )

    threads = [threading.Thread(target=read, args=(r,)) for r in runs]
    try:
        with event_loop_thread() as loop:
            for thread in threads:
                thread.start()
            tasks = [asyncio.run_coroutine_threadsafe(aread(r), loop) for r in runs]
            wait_until("six followers to subscribe", lambda: len(fanout.every_inbox()) == 6)
            for run_id in runs:
                emit(store, run_id, MODEL_STARTED, 1)
            wait_until("seq 3 to arrive live in every follower's inbox", lambda: handed_live(3))

            private_redis.stop()
            for run_id in runs:  # committed while Redis is down: nobody hears of them
                emit(store, run_id, TOOL_STARTED, 2)
                emit(store, run_id, TOOL_STARTED, 3)
            private_redis.start()
            wait_until("every follower to read seq 5 from the database", lambda: everyone_saw(5))
            wait_until(
                "the hub to subscribe again",
                lambda: [int(c["sub"]) for c in pubsub_clients(private_redis.url)] == [3 + 1],
            )
            for run_id in runs:
                emit(store, run_id, MODEL_STARTED, 4)
            wait_until("seq 6 to arrive live in every follower's inbox", lambda: handed_live(6))
            for run_id in runs:
                emit(store, run_id, RUN_SUCCEEDED)
            for thread in threads:
                thread.join(WAIT)
            for task in tasks:
                task.result(WAIT)
    finally:
        fanout.close()

    for (run_id, kind), events in shown.items():
        assert seqs(events) == list(range(1, 8)), (run_id, kind)
        assert events[-1]["type"] == RUN_SUCCEEDED
    for handed in fanout.every_inbox():
        assert LOST in handed  # told that live messages were lost while Redis was down


# Slow followers ---------------------------------------------------------------------------------

MESSAGES = 500


def _read_all(inbox: Subscription, count: int) -> list[Event | None]:
    return [inbox.get(timeout=WAIT) for _ in range(count)]


def test_followers_that_never_read_do_not_hold_up_one_that_does():
    fanout = RedisFanout(REDIS_URL)
    run_id, other_run = str(uuid.uuid4()), str(uuid.uuid4())
    subscribed, release = threading.Event(), threading.Event()

    async def slow() -> list[Event | None]:
        async with fanout.asubscribe(run_id, limit=8) as inbox:
            subscribed.set()
            await asyncio.to_thread(release.wait, WAIT)  # reads nothing until released
            return [await inbox.get(timeout=WAIT) for _ in range(9)]

    with event_loop_thread() as loop:
        slow_reader = asyncio.run_coroutine_threadsafe(slow(), loop)
        try:
            assert subscribed.wait(WAIT)
            with (
                fanout.subscribe(run_id, limit=8) as idle,  # a thread that never reads either
                fanout.subscribe(run_id) as reader,
                fanout.subscribe(other_run) as elsewhere,
            ):
                for seq in range(MESSAGES):
                    fanout.publish(run_id, {"seq": seq})
                    fanout.publish(other_run, {"seq": seq})
                got = _read_all(reader, MESSAGES)
                # Published last: once it is here, every inbox has had every message.
                got_elsewhere = _read_all(elsewhere, MESSAGES)
                assert not slow_reader.done()  # the slow one has read nothing yet
                release.set()
                late = slow_reader.result(WAIT)
                idle_late = _read_all(idle, 9)
        finally:
            release.set()
            fanout.close()

    assert got == got_elsewhere == [{"seq": s} for s in range(MESSAGES)]
    assert late == idle_late == [LOST, *({"seq": s} for s in range(8))]


def test_a_follower_whose_event_loop_is_blocked_does_not_hold_up_the_others():
    fanout = RedisFanout(REDIS_URL)
    run_id = str(uuid.uuid4())
    blocking, release = threading.Event(), threading.Event()

    async def stuck() -> list[Event | None]:
        async with fanout.asubscribe(run_id, limit=8) as inbox:
            blocking.set()
            release.wait(WAIT)  # blocks the whole event loop: no callback runs meanwhile
            return [await inbox.get(timeout=WAIT) for _ in range(9)]

    with event_loop_thread() as loop:
        stuck_reader = asyncio.run_coroutine_threadsafe(stuck(), loop)
        try:
            assert blocking.wait(WAIT)
            with fanout.subscribe(run_id) as reader:
                for seq in range(MESSAGES):
                    fanout.publish(run_id, {"seq": seq})
                got = _read_all(reader, MESSAGES)
            assert not stuck_reader.done()
        finally:
            release.set()
            fanout.close()
        late = stuck_reader.result(WAIT)

    assert got == [{"seq": s} for s in range(MESSAGES)]
    # The messages reach its inbox once the loop runs again: it keeps the first eight and is
    # told it lost the rest (the notice may come after the first message it reads).
    assert late.count(LOST) == 1
    assert [m for m in late if m is not LOST] == [{"seq": s} for s in range(8)]


def test_messages_published_together_reach_each_run_s_followers_in_order() -> None:
    fanout = RedisFanout(REDIS_URL)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        with fanout.subscribe(first) as one, fanout.subscribe(second) as two:
            together = [(first, {"seq": 1}), (second, {"seq": 1})]
            fanout.publish_many([*together, (first, {"seq": 2}), (first, {"seq": 3})])
            assert _read_all(one, 3) == [{"seq": 1}, {"seq": 2}, {"seq": 3}]
            assert _read_all(two, 1) == [{"seq": 1}]
    finally:
        fanout.close()


def test_an_async_inbox_hands_out_what_is_queued_even_with_no_time_to_wait():
    """A follower that is behind takes its queued messages at once, with no timer per
    message; with nothing queued a zero timeout is an empty poll."""

    async def read() -> list[Event | None]:
        inbox = AsyncSubscription(limit=4)
        for seq in range(6):  # two more than it keeps
            inbox.deliver({"seq": seq})
        await asyncio.sleep(0)  # the deliveries are callbacks of this loop
        return [await inbox.get(timeout=0) for _ in range(6)]

    assert asyncio.run(read()) == [LOST, *({"seq": s} for s in range(4)), None]


def test_an_async_follower_that_waits_has_each_message_one_loop_turn_after_it_arrives():
    """A waiting follower is woken by the message itself, with no task in between."""

    async def turns_to_hand_over() -> list[int]:
        inbox = AsyncSubscription()
        taken: list[Event | None] = []

        async def reader() -> None:
            while len(taken) < 5:
                taken.append(await inbox.get(timeout=WAIT))

        task = asyncio.create_task(reader())
        turns = []
        for seq in range(5):
            await asyncio.sleep(0)  # the reader is waiting again
            inbox._put({"seq": seq})  # as the hub's wake-up does, on this loop
            count = 0
            while len(taken) <= seq:
                await asyncio.sleep(0)
                count += 1
            turns.append(count)
        await task
        assert taken == [{"seq": s} for s in range(5)]
        return turns

    assert asyncio.run(turns_to_hand_over()) == [1] * 5


def test_an_async_inbox_whose_wait_was_cancelled_or_timed_out_still_hands_out_later_messages():
    async def read() -> list[Event | None]:
        inbox = AsyncSubscription()
        waiting = asyncio.create_task(inbox.get(timeout=WAIT))
        await asyncio.sleep(0)
        waiting.cancel()  # a follower that hung up mid-wait
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        timed_out = await inbox.get(timeout=0.01)
        inbox._put({"seq": 1})
        return [timed_out, await inbox.get(timeout=WAIT)]

    assert asyncio.run(read()) == [None, {"seq": 1}]


def test_followers_on_two_event_loops_and_a_thread_each_get_every_message_in_order():
    fanout = RedisFanout(REDIS_URL)
    run_id = str(uuid.uuid4())
    ready = threading.Barrier(6)  # five asyncio followers and the publisher

    async def follower() -> list[Event | None]:
        async with fanout.asubscribe(run_id) as inbox:
            await asyncio.to_thread(ready.wait, WAIT)
            return [await inbox.get(timeout=WAIT) for _ in range(MESSAGES)]

    with event_loop_thread() as one, event_loop_thread() as two:
        readers = [asyncio.run_coroutine_threadsafe(follower(), loop) for loop in (one,) * 3]
        readers += [asyncio.run_coroutine_threadsafe(follower(), loop) for loop in (two,) * 2]
        try:
            with fanout.subscribe(run_id) as in_a_thread:
                ready.wait(WAIT)
                for seq in range(MESSAGES):
                    fanout.publish(run_id, {"seq": seq})
                got = [_read_all(in_a_thread, MESSAGES)]
                got += [reader.result(WAIT) for reader in readers]
        finally:
            fanout.close()

    assert got == [[{"seq": s} for s in range(MESSAGES)]] * 6
