"""The follow protocol: a run's events after sequence number N, without gaps or repeats.

A follower subscribes to the run's channel first, then replays the committed
events after N from the database, then takes live messages. `Gapless` decides
what to do with each one: a stored event is shown when it is the next number,
dropped when already shown, and a hole (a number further on) sends the follower
back to the database. Token deltas (`model.delta`, no number) are shown once
the model step they belong to has been shown to start, and dropped once that
step completed or that attempt was retracted. A follower that resumes after N
first reads the model events up to N, so it knows which attempts are void.
Whatever the interleaving of live messages and database reads, the stored
events come out 1, 2, 3… exactly once, and the follower ends after the
terminal event.

`follow` and `afollow` drive `Gapless` with a real store, blocking or asyncio.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from storage.events import (
    MODEL_COMPLETED,
    MODEL_DELTA,
    MODEL_RETRACTED,
    MODEL_STARTED,
    TERMINAL_EVENTS,
)
from storage.fanout import LOST
from storage.models import TERMINAL, Run
from storage.store import Store

Event = dict[str, Any]

QUIET = 10.0  # seconds a live follower waits before it looks in the database anyway
DEGRADED = 0.5  # the same without a live subscription (Redis is away, or in-process only)


class FollowTimeout(TimeoutError):
    """The run did not end within the follower's timeout."""


class Verdict(enum.Enum):
    """What a follower does with a live message."""

    SHOW = "show"
    DROP = "drop"
    CATCH_UP = "catch up"  # read the database first, then offer the message again


class Gapless:
    """The follower's memory: the last number shown, and which model attempts are open."""

    def __init__(self, after: int = 0) -> None:
        self.last = after
        self.ended = False
        self._attempt: dict[int, int] = {}  # step → the newest attempt known to have started
        self._retracted: set[tuple[int, int]] = set()  # (step, attempt)
        self._completed: set[int] = set()  # steps whose model answered: no more deltas

    def learn(self, history: list[Event]) -> None:
        """Note the model events at or before `after`, shown before this follower began."""
        for event in history:
            if event["seq"] <= self.last:
                self._remember(event)

    def take(self, event: Event) -> bool:
        """Note a stored event read from the database; True when it is to be shown."""
        if self.ended or event["seq"] != self.last + 1:
            return False
        self._note(event)
        return True

    def offer(self, message: Event, *, caught_up: bool = False) -> Verdict:
        """What to do with a live message; `caught_up` once the database was read for it."""
        if self.ended:
            return Verdict.DROP
        if message["seq"] is None:
            return self._offer_delta(message, caught_up)
        if message["seq"] <= self.last:
            if message["type"] in TERMINAL_EVENTS:
                self.ended = True  # the run ended at or before where this follower began
            return Verdict.DROP
        if message["seq"] > self.last + 1:
            # Committed before it was published, so reading the database fills the hole.
            return Verdict.DROP if caught_up else Verdict.CATCH_UP
        self._note(message)
        return Verdict.SHOW

    def _offer_delta(self, message: Event, caught_up: bool) -> Verdict:
        if message["type"] != MODEL_DELTA:
            return Verdict.SHOW  # a live-only kind this follower does not know: pass it on
        step, attempt = message["step"], message["data"].get("attempt", 1)
        if step in self._completed or (step, attempt) in self._retracted:
            return Verdict.DROP
        known = self._attempt.get(step)
        if known is not None and attempt < known:
            return Verdict.DROP  # a superseded attempt's late fragment
        if known is None or attempt > known:
            if not caught_up:
                return Verdict.CATCH_UP  # its model.started is committed: show that first
            self._attempt[step] = attempt  # started before the history this follower read
        return Verdict.SHOW

    def _note(self, event: Event) -> None:
        self.last = event["seq"]
        self._remember(event)
        if event["type"] in TERMINAL_EVENTS:
            self.ended = True

    def _remember(self, event: Event) -> None:
        kind, step = event["type"], event["step"]
        if kind == MODEL_STARTED:
            attempt = event["data"].get("attempt", 1)
            self._attempt[step] = max(attempt, self._attempt.get(step, attempt))
        elif kind == MODEL_COMPLETED:
            self._completed.add(step)
        elif kind == MODEL_RETRACTED:
            self._retracted.add((step, event["data"]["attempt"]))


def _seen_the_end(store: Store, run_id: str, after: int) -> bool:
    """True when the run has ended and `after` is at or past its terminal event."""
    with store.reading() as db:
        run = db.get(Run, run_id)
        return run is not None and run.status in TERMINAL and run.last_seq <= after


def follow(
    store: Store, run_id: str, after: int = 0, *, timeout: float | None = None
) -> Iterator[Event]:
    """The run's events after `after`: replayed, then live, until the terminal event.

    Raises `FollowTimeout` when `timeout` seconds pass first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    gap = Gapless(after)

    def catch_up() -> Iterator[Event]:
        yield from (e for e in store.events_after(run_id, gap.last) if gap.take(e))

    with store.fanout.subscribe(run_id) as live:
        if after:
            gap.learn(store.model_history(run_id, after))
        yield from catch_up()
        if gap.last == after and _seen_the_end(store, run_id, after):
            return
        while not gap.ended:
            wait = QUIET if live.live else DEGRADED
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise FollowTimeout(f"run {run_id} did not end within {timeout} s")
            message = live.get(timeout=wait)
            if message is None or message is LOST:
                yield from catch_up()
                if gap.last == after and _seen_the_end(store, run_id, after):
                    return  # it began past the end of a run that has ended since
                continue
            verdict = gap.offer(message)
            if verdict is Verdict.CATCH_UP:
                yield from catch_up()
                verdict = gap.offer(message, caught_up=True)
            if verdict is Verdict.SHOW:
                yield dict(message)


async def afollow(
    store: Store, run_id: str, after: int = 0, *, timeout: float | None = None
) -> AsyncIterator[Event]:
    """`follow` for asyncio: database reads run in worker threads, live messages on the loop."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    gap = Gapless(after)

    async def catch_up() -> list[Event]:
        stored = await asyncio.to_thread(store.events_after, run_id, gap.last)
        return [e for e in stored if gap.take(e)]

    async with store.fanout.asubscribe(run_id) as live:
        if after:
            gap.learn(await asyncio.to_thread(store.model_history, run_id, after))
        for event in await catch_up():
            yield event
        if gap.last == after and await asyncio.to_thread(_seen_the_end, store, run_id, after):
            return
        while not gap.ended:
            wait = QUIET if live.live else DEGRADED
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    raise FollowTimeout(f"run {run_id} did not end within {timeout} s")
            message = await live.get(timeout=wait)
            if message is None or message is LOST:
                for event in await catch_up():
                    yield event
                if gap.last == after and await asyncio.to_thread(
                    _seen_the_end, store, run_id, after
                ):
                    return  # it began past the end of a run that has ended since
                continue
            verdict = gap.offer(message)
            if verdict is Verdict.CATCH_UP:
                for event in await catch_up():
                    yield event
                verdict = gap.offer(message, caught_up=True)
            if verdict is Verdict.SHOW:
                yield dict(message)
