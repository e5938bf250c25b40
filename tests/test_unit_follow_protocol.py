"""The follow protocol: `Gapless` one message at a time, then the real `follow` and `afollow`
against a simulated run whose database and live stream an adversary drives.

The simulation keeps the two promises the protocol relies on: the committed events
are always a prefix 1..k of the log (numbers are handed out under the run's row lock),
and a message is published only after its event is committed (a delta only after its
attempt's `model.started`). Everything else is the adversary's: when the database
grows, which live messages arrive, in what order (within a small window), twice or
not at all, inbox overflows (`LOST`), quiet spells, and deltas of retracted attempts
that arrive long after the retraction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storage.events import (
    MODEL_COMPLETED,
    MODEL_DELTA,
    MODEL_RETRACTED,
    MODEL_RETRYING,
    MODEL_STARTED,
    RUN_FAILED,
    RUN_QUEUED,
    RUN_STARTED,
    RUN_SUCCEEDED,
    RUN_TIMED_OUT,
    TERMINAL_EVENTS,
    TOOL_COMPLETED,
    TOOL_FAILED,
    TOOL_STARTED,
)
from storage.fanout import LOST
from storage.follow import Gapless, Verdict, afollow, follow

Event = dict[str, Any]
RUN = "run-1"
WINDOW = 3  # how far ahead of the oldest message in flight the adversary may reach
BUDGET = 80  # adversarial moves per follower; then the world plays fair and ends the run
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def stored(seq: int, kind: str, step: int | None = None, **data: Any) -> Event:
    """A stored event as the database and the live channel carry it."""
    return {"run_id": RUN, "seq": seq, "type": kind, "step": step, "data": data, "at": "t"}


def delta(step: int, attempt: int, text: str = "word ") -> Event:
    """A live-only token delta of one model attempt."""
    data = {"kind": "text", "text": text, "index": 0, "attempt": attempt}
    return {"run_id": RUN, "seq": None, "type": MODEL_DELTA, "step": step, "data": data, "at": "t"}


# Gapless, one message at a time ---------------------------------------------------------------


def test_a_stored_event_is_shown_only_when_it_is_the_next_number():
    gap = Gapless()
    assert not gap.take(stored(2, RUN_STARTED))
    assert gap.take(stored(1, RUN_QUEUED))
    assert not gap.take(stored(1, RUN_QUEUED))
    assert gap.take(stored(2, RUN_STARTED))
    assert gap.last == 2


def test_a_live_event_already_shown_is_dropped_and_the_next_one_is_shown():
    gap = Gapless(after=3)
    assert gap.offer(stored(2, RUN_STARTED)) is Verdict.DROP
    assert gap.offer(stored(3, MODEL_STARTED, 1, attempt=1)) is Verdict.DROP
    assert gap.offer(stored(4, MODEL_COMPLETED, 1)) is Verdict.SHOW
    assert gap.last == 4


def test_a_live_event_past_a_hole_sends_the_follower_to_the_database_once():
    gap = Gapless(after=1)
    assert gap.offer(stored(3, MODEL_STARTED, 1, attempt=1)) is Verdict.CATCH_UP
    assert gap.take(stored(2, RUN_STARTED))
    assert gap.take(stored(3, MODEL_STARTED, 1, attempt=1))
    assert gap.offer(stored(3, MODEL_STARTED, 1, attempt=1), caught_up=True) is Verdict.DROP


def test_a_hole_the_database_could_not_fill_drops_the_message_instead_of_showing_it():
    gap = Gapless(after=1)
    assert gap.offer(stored(5, TOOL_STARTED, 2), caught_up=True) is Verdict.DROP
    assert gap.last == 1


def test_nothing_is_shown_after_the_terminal_event():
    gap = Gapless(after=4)
    assert gap.take(stored(5, RUN_SUCCEEDED))
    assert gap.ended
    assert not gap.take(stored(6, RUN_STARTED))
    assert gap.offer(stored(6, RUN_STARTED)) is Verdict.DROP
    assert gap.offer(delta(1, 1)) is Verdict.DROP


@pytest.mark.parametrize("kind", sorted(TERMINAL_EVENTS))
def test_every_terminal_event_ends_the_follower(kind):
    gap = Gapless()
    assert gap.offer(stored(1, kind)) is Verdict.SHOW
    assert gap.ended


def test_a_delta_waits_for_its_model_started_then_shows_until_the_attempt_completes():
    gap = Gapless(after=2)
    assert gap.offer(delta(1, 1)) is Verdict.CATCH_UP  # its model.started is committed
    assert gap.take(stored(3, MODEL_STARTED, 1, attempt=1))
    assert gap.offer(delta(1, 1), caught_up=True) is Verdict.SHOW
    assert gap.offer(delta(1, 1)) is Verdict.SHOW
    assert gap.offer(stored(4, MODEL_COMPLETED, 1)) is Verdict.SHOW
    assert gap.offer(delta(1, 1)) is Verdict.DROP


def test_deltas_of_a_retracted_attempt_are_dropped_and_the_next_attempt_shows_its_own():
    gap = Gapless(after=2)
    assert gap.take(stored(3, MODEL_STARTED, 1, attempt=1))
    assert gap.offer(delta(1, 1)) is Verdict.SHOW
    assert gap.take(stored(4, MODEL_RETRACTED, 1, attempt=1, reason="retry"))
    assert gap.offer(delta(1, 1)) is Verdict.DROP
    assert gap.offer(delta(1, 2)) is Verdict.CATCH_UP
    assert gap.take(stored(5, MODEL_STARTED, 1, attempt=2))
    assert gap.offer(delta(1, 2), caught_up=True) is Verdict.SHOW
    assert gap.offer(delta(1, 1)) is Verdict.DROP  # a late fragment of the retracted attempt


def test_a_late_delta_of_a_superseded_attempt_is_dropped_even_without_a_retraction():
    gap = Gapless(after=2)
    assert gap.take(stored(3, MODEL_STARTED, 1, attempt=1))
    assert gap.take(stored(4, MODEL_RETRYING, 1, attempt=1))
    assert gap.take(stored(5, MODEL_STARTED, 1, attempt=2))
    assert gap.offer(delta(1, 1)) is Verdict.DROP
    assert gap.offer(delta(1, 2)) is Verdict.SHOW


def test_a_follower_that_began_after_the_model_started_shows_the_attempts_deltas():
    gap = Gapless(after=3)  # seq 3 was this step's model.started
    assert gap.offer(delta(1, 1)) is Verdict.CATCH_UP
    assert gap.offer(delta(1, 1), caught_up=True) is Verdict.SHOW
    assert gap.offer(delta(1, 1)) is Verdict.SHOW
    assert gap.offer(stored(4, MODEL_COMPLETED, 1)) is Verdict.SHOW
    assert gap.offer(delta(1, 1)) is Verdict.DROP


def test_a_follower_that_began_after_the_model_started_drops_deltas_once_it_reads_completed():
    gap = Gapless(after=3)  # seq 3 was this step's model.started, attempt 1
    assert gap.offer(delta(1, 1)) is Verdict.CATCH_UP
    assert gap.take(stored(4, MODEL_COMPLETED, 1))  # the database is ahead of the channel
    assert gap.offer(delta(1, 1), caught_up=True) is Verdict.DROP


def test_a_follower_that_began_after_a_second_attempt_started_drops_its_deltas_after_completed():
    gap = Gapless(after=5)  # 3: model.started 1, 4: model.retracted 1, 5: model.started 2
    assert gap.offer(delta(1, 2)) is Verdict.CATCH_UP
    assert gap.take(stored(6, MODEL_COMPLETED, 1))  # the database is ahead of the channel
    assert gap.offer(delta(1, 2), caught_up=True) is Verdict.DROP


def test_a_live_only_kind_the_follower_does_not_know_is_passed_on():
    gap = Gapless(after=1)
    message = {"run_id": RUN, "seq": None, "type": "model.thinking", "step": 1, "data": {}}
    assert gap.offer(message) is Verdict.SHOW
    assert gap.last == 1


# A simulated run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One model call of a step: where it starts and ends in the log."""

    step: int
    number: int
    started: int
    closed: int | None  # seq of its model.completed or model.retracted; None while open


@dataclass
class Script:
    """A run's stored log and every live message, each at the commit it follows."""

    log: list[Event]
    attempts: dict[tuple[int, int], Attempt]
    # slots[k]: the messages published after event k was committed and before event k+1.
    slots: list[list[Event]]


def _tool_events(draw: st.DrawFn, first: int, count: int) -> list[tuple[str, int]]:
    """Parallel tool steps: each starts before it ends, in any interleaving."""
    pending: dict[int, list[str]] = {}
    for step in range(first, first + count):
        pending[step] = [TOOL_STARTED, draw(st.sampled_from([TOOL_COMPLETED, TOOL_FAILED]))]
    order = []
    while pending:
        step = draw(st.sampled_from(sorted(pending)))
        order.append((pending[step].pop(0), step))
        if not pending[step]:
            del pending[step]
    return order


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """A run: model steps with retried attempts and streamed deltas, parallel tools between
    them, and a terminal event last; deltas published while their attempt is open, and some
    of a retracted attempt's deltas long after its retraction."""
    log: list[Event] = []
    attempts: dict[tuple[int, int], Attempt] = {}
    streams: list[tuple[int, int | None, list[Event]]] = []  # (from slot, until slot, deltas)
    late: list[tuple[int, Event]] = []

    def emit(kind: str, step: int | None = None, **data: Any) -> int:
        log.append(stored(len(log) + 1, kind, step, **data))
        return len(log)

    emit(RUN_QUEUED)
    emit(RUN_STARTED)
    step, open_end = 1, False
    model_steps = draw(st.integers(1, 3))
    for index in range(model_steps):
        last_step = index == model_steps - 1
        tries = draw(st.integers(1, 3))
        for number in range(1, tries + 1):
            started = emit(MODEL_STARTED, step, model="scripted:x", attempt=number)
            words = [
                delta(step, number, f"s{step}a{number}w{i} ")
                for i in range(draw(st.integers(0, 3)))
            ]
            closed: int | None
            if number < tries:
                interrupted = draw(st.booleans())
                if interrupted or words:  # an interrupted attempt is always retracted
                    closed = emit(MODEL_RETRACTED, step, attempt=number, reason="again")
                else:
                    closed = None
                if not interrupted:
                    emit(MODEL_RETRYING, step, attempt=number, error="busy")
                if closed is not None:  # its worker was presumed dead, and streams on
                    for i in range(draw(st.integers(0, 2))):
                        late.append((closed, delta(step, number, f"s{step}a{number}z{i} ")))
            elif last_step and draw(st.booleans()):
                closed, open_end = None, True  # the run ends while this attempt streams
            else:
                closed = emit(MODEL_COMPLETED, step, finish_reason="stop")
            attempts[step, number] = Attempt(step, number, started, closed)
            streams.append((started, None if closed is None else closed - 1, words))
        if open_end:
            emit(RUN_TIMED_OUT)
            break
        if last_step:
            emit(draw(st.sampled_from([RUN_SUCCEEDED, RUN_FAILED])))
            break
        tools = draw(st.integers(1, 3))
        for kind, number in _tool_events(draw, step + 1, tools):
            emit(kind, number)
        step += tools + 1

    n = len(log)
    slots: list[list[Event]] = [[] for _ in range(n + 1)]
    for stored_event in log:
        slots[stored_event["seq"]].append(stored_event)
    for start, until, words in streams:
        # The streaming thread publishes its model.started first, then its deltas in order.
        end = n if until is None else until
        places = sorted(draw(st.integers(start, end)) for _ in words)
        for place, word in zip(places, words, strict=True):
            slots[place].append(word)
    for earliest, word in late:
        slots[draw(st.integers(earliest, n))].append(word)
    return Script(log, attempts, slots)


class World:
    """The database and the live channel of one run, moved on by an adversary.

    `choose(strategy, label)` makes the adversary's choices: Hypothesis draws them, or a
    test replays a fixed list. After `budget` moves the world plays fair: it commits the
    rest and delivers what is in flight, in order, so every follower ends.
    """

    def __init__(
        self,
        script: Script,
        choose: Callable[[st.SearchStrategy[Any], str], Any],
        committed: int,
        budget: int = BUDGET,
        commits_while_reading: Iterable[int] = (),
    ) -> None:
        self.script = script
        self.choose = choose
        self.committed = committed
        self.budget = budget
        # Fixed up front: `afollow` reads the database in worker threads, where Hypothesis
        # cannot draw.
        self.commits_while_reading = list(commits_while_reading)
        self.in_flight: list[Event] = []
        self.waits = 0
        self.reads = 0

    @property
    def end(self) -> int:
        return len(self.script.log)

    def subscribe(self, missed_slot: bool) -> None:
        """The subscription is confirmed: from now on the follower hears what is published
        (and what the last committer has yet to publish, unless `missed_slot`)."""
        if not missed_slot:
            self.in_flight.extend(self.script.slots[self.committed])

    def commit(self) -> bool:
        if self.committed == self.end:
            return False
        self.committed += 1
        self.in_flight.extend(self.script.slots[self.committed])
        return True

    def _meanwhile(self) -> None:
        """Commits that land while the follower reads the database."""
        if self.commits_while_reading:
            for _ in range(self.commits_while_reading.pop(0)):
                self.commit()

    def events_after(self, after: int) -> list[Event]:
        self.reads += 1
        self._meanwhile()
        return [dict(e) for e in self.script.log[: self.committed] if e["seq"] > after]

    def run_row(self) -> SimpleNamespace:
        self._meanwhile()
        ended = self.committed == self.end
        return SimpleNamespace(status="succeeded" if ended else "running", last_seq=self.committed)

    def next_live(self) -> Event | None:
        """What the follower's inbox hands it next: a message, `LOST`, or None (quiet)."""
        self.waits += 1
        assert self.waits < 10_000, "the follower never ended"
        while self.budget > 0:
            self.budget -= 1
            move = self.choose(st.sampled_from(MOVES), "move")
            if move == "commit":
                self.commit()
                continue
            if move == "quiet" or not self.in_flight:
                return None
            if move == "lost":  # the inbox overflowed: the newest messages never made it in
                keep = self.choose(st.integers(0, len(self.in_flight)), "kept")
                del self.in_flight[keep:]
                return LOST
            reach = min(WINDOW, len(self.in_flight))
            index = self.choose(st.integers(0, reach - 1), "which")
            if move == "drop":
                del self.in_flight[index]
                continue
            message = self.in_flight[index] if move == "twice" else self.in_flight.pop(index)
            return dict(message)
        for _ in range(self.end - self.committed):  # fair play: commit the rest
            self.commit()
        return dict(self.in_flight.pop(0)) if self.in_flight else None


MOVES = ["commit", "deliver", "twice", "drop", "lost", "quiet"]


class Replay:
    """The adversary's choices from a list, for a test that tells one story."""

    def __init__(self, *choices: Any) -> None:
        self.choices = list(choices)

    def __call__(self, strategy: st.SearchStrategy[Any], label: str) -> Any:
        return self.choices.pop(0)


class FakeSubscription:
    """An inbox as `follow` sees it."""

    live = True
    late = False

    def __init__(self, world: World) -> None:
        self.world = world

    def get(self, timeout: float) -> Event | None:
        return self.world.next_live()


class FakeAsyncSubscription(FakeSubscription):
    async def get(self, timeout: float) -> Event | None:  # type: ignore[override]
        await asyncio.sleep(0)
        return self.world.next_live()


class FakeFanout:
    def __init__(self, world: World, missed_slot: bool) -> None:
        self.world = world
        self.missed_slot = missed_slot

    @contextmanager
    def subscribe(self, run_id: str) -> Iterator[FakeSubscription]:
        assert run_id == RUN
        self.world.subscribe(self.missed_slot)
        yield FakeSubscription(self.world)

    @asynccontextmanager
    async def asubscribe(self, run_id: str) -> AsyncIterator[FakeAsyncSubscription]:
        assert run_id == RUN
        self.world.subscribe(self.missed_slot)
        yield FakeAsyncSubscription(self.world)


class FakeDb:
    def __init__(self, world: World) -> None:
        self.world = world

    def get(self, table: type, run_id: str) -> SimpleNamespace:
        assert run_id == RUN
        return self.world.run_row()


class FakeStore:
    """What `follow` uses of a `Store`: the fan-out, `events_after` and `reading`."""

    def __init__(self, world: World, missed_slot: bool = False) -> None:
        self.world = world
        self.fanout = FakeFanout(world, missed_slot)

    def events_after(self, run_id: str, after: int) -> list[Event]:
        assert run_id == RUN
        return self.world.events_after(after)

    def model_history(self, run_id: str, upto: int) -> list[Event]:
        assert run_id == RUN
        kinds = (MODEL_STARTED, MODEL_COMPLETED, MODEL_RETRACTED)
        committed = self.world.script.log[: self.world.committed]
        return [dict(e) for e in committed if e["seq"] <= upto and e["type"] in kinds]

    @contextmanager
    def reading(self) -> Iterator[FakeDb]:
        yield FakeDb(self.world)


def drive(store: FakeStore, after: int, asynchronous: bool = False) -> list[Event]:
    """Everything the real `follow` (or `afollow`) yields."""
    if not asynchronous:
        return list(follow(store, RUN, after))  # type: ignore[arg-type]

    async def collect() -> list[Event]:
        return [e async for e in afollow(store, RUN, after)]  # type: ignore[arg-type]

    return asyncio.run(collect())


def check(script: Script, after: int, shown: list[Event]) -> None:
    """Stored events once, in order, from `after` + 1 to the terminal event, nothing later;
    each delta while its attempt is open in the log as far as the follower has been shown
    it (or began after)."""
    expected = [(e["seq"], e["type"]) for e in script.log if e["seq"] > after]
    assert [(e["seq"], e["type"]) for e in shown if e["seq"] is not None] == expected
    if expected:
        assert shown[-1]["type"] in TERMINAL_EVENTS
    else:
        assert shown == []
    last = after
    for message in shown:
        if message["seq"] is not None:
            last = message["seq"]
            continue
        attempt = script.attempts[message["step"], message["data"]["attempt"]]
        assert attempt.started <= last, (message, "before its model.started", last)
        assert attempt.closed is None or attempt.closed > last, (
            message,
            "after its attempt was completed or retracted",
            last,
        )


def follow_the_script(
    data: st.DataObject,
    script: Script,
    after: int,
    asynchronous: bool,
) -> None:
    end = len(script.log)
    # A follower resumes from a number it was shown, so that event is committed already.
    committed = end if after >= end else data.draw(st.integers(after, end), label="committed")
    world = World(
        script,
        lambda strategy, label: data.draw(strategy, label=label),
        committed,
        commits_while_reading=data.draw(
            st.lists(st.integers(0, 2), max_size=12), label="commits while reading"
        ),
    )
    store = FakeStore(world, missed_slot=data.draw(st.booleans(), label="missed slot"))
    shown = drive(store, after, asynchronous)
    check(script, after, shown)
    deltas = [e for e in shown if e["seq"] is None]
    event(f"deltas shown: {len(deltas) if len(deltas) < 3 else '3 or more'}")
    event(f"database reads: {world.reads if world.reads < 4 else '4 or more'}")


@PROPERTY
@given(data=st.data(), script=scripts(), asynchronous=st.booleans())
def test_a_follower_from_the_start_sees_every_stored_event_once_and_each_delta_in_its_attempt(
    data, script, asynchronous
):
    follow_the_script(data, script, 0, asynchronous)


@st.composite
def resumptions(draw: st.DrawFn) -> tuple[Script, int]:
    """A run and a number to resume after: anywhere, just past a model.started, or at or past
    the end."""
    script = draw(scripts())
    end = len(script.log)
    started = [a.started for a in script.attempts.values()]
    after = draw(
        st.one_of(st.integers(0, end), st.sampled_from(started), st.integers(end, end + 3))
    )
    return script, after


@PROPERTY
@given(data=st.data(), resumption=resumptions(), asynchronous=st.booleans())
def test_a_follower_resuming_after_any_number_sees_the_rest_once_and_each_delta_in_its_attempt(
    data, resumption, asynchronous
):
    script, after = resumption
    follow_the_script(data, script, after, asynchronous)


# Told as stories through the real `follow` ----------------------------------------------------


def _script(kinds: list[tuple[str, int | None, dict[str, Any]]], deltas: dict[int, list[Event]]):
    """A hand-written run: its log, and deltas published after the commit of the given seq."""
    log = [stored(seq, kind, step, **data) for seq, (kind, step, data) in enumerate(kinds, 1)]
    slots: list[list[Event]] = [[], *([e] for e in log)]
    for slot, words in deltas.items():
        slots[slot].extend(words)
    attempts: dict[tuple[int, int], Attempt] = {}
    latest: dict[int, int] = {}  # step → its latest attempt
    for e in log:
        step = e["step"]
        if e["type"] == MODEL_STARTED:
            latest[step] = e["data"]["attempt"]
            attempts[step, latest[step]] = Attempt(step, latest[step], e["seq"], None)
        elif e["type"] in (MODEL_COMPLETED, MODEL_RETRACTED):
            number = e["data"].get("attempt", latest[step])
            attempts[step, number] = Attempt(step, number, attempts[step, number].started, e["seq"])
    return Script(log, attempts, slots)


RETRIED = [
    (RUN_QUEUED, None, {}),
    (RUN_STARTED, None, {}),
    (MODEL_STARTED, 1, {"attempt": 1}),  # 3
    (MODEL_RETRACTED, 1, {"attempt": 1, "reason": "the earlier attempt was interrupted"}),  # 4
    (MODEL_STARTED, 1, {"attempt": 2}),  # 5
    (MODEL_COMPLETED, 1, {"finish_reason": "tool_calls"}),  # 6
    (TOOL_STARTED, 2, {}),  # 7
    (TOOL_COMPLETED, 2, {}),  # 8
    (MODEL_STARTED, 3, {"attempt": 1}),  # 9
    (MODEL_COMPLETED, 3, {"finish_reason": "stop"}),  # 10
    (RUN_SUCCEEDED, None, {}),  # 11
]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["follow", "afollow"])
def test_a_follower_that_subscribed_during_a_retry_shows_only_the_new_attempts_deltas(
    asynchronous,
):
    deltas = {
        3: [delta(1, 1, "unheard ")],  # published before the follower subscribed
        5: [delta(1, 2, "kept ")],
        8: [delta(1, 1, "zombie ")],  # attempt 1's worker was presumed dead, and streams on
    }
    script = _script(RETRIED, deltas)
    # Subscribed once seq 5 was committed; the rest arrives in order.
    world = World(script, Replay(), committed=5, budget=0)
    shown = drive(FakeStore(world), 0, asynchronous)
    check(script, 0, shown)
    assert [e["data"]["text"] for e in shown if e["seq"] is None] == ["kept "]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["follow", "afollow"])
def test_a_follower_resuming_after_a_model_started_shows_that_attempts_deltas(asynchronous):
    script = _script(RETRIED, {9: [delta(3, 1, "one "), delta(3, 1, "two ")]})
    world = World(script, Replay("deliver", 1, "deliver", 1), committed=9, budget=2)
    shown = drive(FakeStore(world), 9, asynchronous)
    check(script, 9, shown)
    assert [e["data"]["text"] for e in shown if e["seq"] is None] == ["one ", "two "]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["follow", "afollow"])
def test_a_follower_that_lost_live_messages_reads_them_from_the_database(asynchronous):
    script = _script(RETRIED, {})
    # Subscribed at 2; the inbox overflows and keeps nothing; everything else is quiet.
    moves = ["commit"] * 9 + ["lost", 0, "quiet", "commit", "quiet"]
    world = World(script, Replay(*moves), committed=2, budget=len(moves) - 1)
    shown = drive(FakeStore(world), 2, asynchronous)
    check(script, 2, shown)


@pytest.mark.parametrize("after", [11, 12, 40])
def test_a_follower_resuming_at_or_past_the_end_of_an_ended_run_sees_nothing_and_returns(after):
    world = World(_script(RETRIED, {}), Replay(), committed=11, budget=0)
    assert drive(FakeStore(world), after) == []
    assert world.waits == 0  # it never waited for a live message


@pytest.mark.parametrize("asynchronous", [False, True], ids=["follow", "afollow"])
def test_a_follower_resuming_after_a_second_attempt_started_shows_no_delta_after_completed(
    asynchronous,
):
    script = _script(RETRIED, {5: [delta(1, 2, "one "), delta(1, 2, "two ")]})
    # Resumed after seq 5 (attempt 2's model.started), subscribed before its deltas were
    # published. Step 1 completes; then the channel delivers in order, behind the database.
    world = World(script, Replay("commit", "deliver", 0, "deliver", 0), committed=5, budget=3)
    shown = drive(FakeStore(world), 5, asynchronous)
    check(script, 5, shown)  # not model.completed (6) followed by the completed step's deltas
    # It read attempt 2's start (5) before it began, so the deltas show in their place.
    assert [e["seq"] for e in shown] == [None, None, 6, 7, 8, 9, 10, 11]


def test_a_follower_resuming_after_a_retraction_shows_no_delta_of_the_retracted_attempt():
    script = _script(RETRIED, {8: [delta(1, 1, "zombie ")]})
    # Resumed after seq 8; attempt 1 of step 1 was retracted at seq 4 and streams on.
    world = World(script, Replay("deliver", 0, "deliver", 0), committed=8, budget=2)
    shown = drive(FakeStore(world), 8)
    check(script, 8, shown)  # it read the retraction (4) before it began, so no zombie text
    assert all(e["seq"] is not None for e in shown)


def test_a_follower_resuming_past_the_last_number_of_a_running_run_ends_when_the_run_does():
    world = World(_script(RETRIED, {}), Replay(), committed=8, budget=0)
    # No stored event is left to show: the follower ends once the run has ended (the world
    # fails the test after 10,000 quiet waits).
    assert drive(FakeStore(world), 20) == []
