"""A model call's live deltas: joined, and published in batches by one thread per process.

A model streams a token every few milliseconds, and a publish to Redis costs a busy
worker a few hundred µs of CPU (a connection from the pool, a round trip, the GIL
taken back): published one by one, a long answer's deltas would cost more than every
other part of its step. So a model call only hands its deltas to `LiveDeltas`, and
this process's publisher thread sends them: the first at once, then, for each call,
at most one message per `interval`, the fragments of one part that came in between
joined into one. A call that sent something less than `interval` ago waits for the
next multiple of `interval` on the monotonic clock, so busy calls fall due together,
and every call due at one moment goes in one pipeline, one round trip. A follower
sees the same text in fewer, longer fragments, at most two intervals late.

A call's deltas leave in order: from that thread, or, at `close`, from the step's
own thread when none of the call's are on their way. So `close` (which returns once
what the call handed over has been sent) is all a step needs before it records or
retracts the call.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from storage.fanout import Fanout, Message

log = logging.getLogger(__name__)

CLOSE_WAIT = 10.0  # seconds `close` waits for the publisher before it gives up on it


class LiveDeltas:
    """The deltas of one model call: `add` each, `close` at the end of the call.

    `message(data)` turns a delta's data (`kind`, `text`, `index`, `attempt`) into
    the run's message; `fanout` carries it to the run `run_id`.
    """

    def __init__(
        self,
        fanout: Fanout,
        run_id: str,
        message: Callable[[dict[str, Any]], Message],
        interval: float,
    ) -> None:
        self.fanout = fanout
        self._run_id = run_id
        self._message = message
        self._interval = interval
        self._lock = threading.Lock()
        self._held: list[dict[str, Any]] = []
        self._last = -float("inf")  # monotonic time of the last handover to the publisher
        self._sending = 0  # batches of this call the publisher has taken and not yet sent

    def add(self, data: dict[str, Any]) -> None:
        """One delta; it goes out at once if the call sent nothing for `interval`."""
        with self._lock:
            self._held.append(data)
            if len(self._held) == 1:
                _publisher().at(self._due(time.monotonic()), self)

    def _due(self, now: float) -> float:
        """Now, if the call sent nothing for `interval`; else the next multiple of the
        interval after that, a moment every busy call of the process shares."""
        if not self._interval or now >= self._last + self._interval:
            return now
        return math.ceil((self._last + self._interval) / self._interval) * self._interval

    def close(self) -> None:
        """Return once every delta added so far has been published (or `CLOSE_WAIT` passed).

        With nothing of the call on its way, what is held is sent from here, at once;
        else the publisher sends it after what it is sending, and this waits for that.
        """
        with self._lock:
            if not self._sending:
                held, self._held = self._held, []
                try:
                    if held:
                        self.fanout.publish_many(self._messages(held))
                except Exception:  # live deltas are best-effort: the step goes on
                    log.exception("could not publish live deltas of run %s", self._run_id)
                return
        sent = threading.Event()
        _publisher().at(-float("inf"), self, sent)
        if not sent.wait(CLOSE_WAIT):
            log.warning("live deltas of run %s not published within %gs", self._run_id, CLOSE_WAIT)

    def take(self, now: float) -> list[tuple[str, Message]]:
        """What is held, joined, as messages to publish now (the publisher's side); call
        `sent` once they are."""
        with self._lock:
            held, self._held = self._held, []
            messages = self._messages(held)
            if messages:
                self._last = now
                self._sending += 1
        return messages

    def sent(self) -> None:
        """The publisher sent (or failed to send) what it last took."""
        with self._lock:
            self._sending -= 1

    def _messages(self, held: list[dict[str, Any]]) -> list[tuple[str, Message]]:
        return [(self._run_id, self._message(data)) for data in joined(held)]


def joined(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neighbouring deltas of one part (`kind`, `index` and `attempt` alike) as one."""
    out: list[dict[str, Any]] = []
    for data in deltas:
        last = out[-1] if out else None
        if last is not None and all(last[k] == data[k] for k in ("kind", "index", "attempt")):
            out[-1] = {**last, "text": last["text"] + data["text"]}
        else:
            out.append(data)
    return out


_Due = tuple[float, int, LiveDeltas, threading.Event | None]


class _Publisher:
    """One daemon thread that publishes each call's deltas when they are due."""

    def __init__(self) -> None:
        self._due: list[_Due] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        threading.Thread(target=self._run, name="stepwise-deltas", daemon=True).start()

    def at(self, when: float, call: LiveDeltas, sent: threading.Event | None = None) -> None:
        """Publish what `call` holds at `when` (monotonic); then set `sent`, if given."""
        with self._wake:
            order = next(self._order)
            heapq.heappush(self._due, (when, order, call, sent))
            if self._due[0][1] == order:  # the new first: the thread sleeps until too late
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                now = time.monotonic()
                due: list[_Due] = []
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due))
            try:
                self._send(due, now)
            except Exception:  # the thread serves every call of the process: it goes on
                log.exception("could not publish live deltas")
            for *_, sent in due:
                if sent is not None:
                    sent.set()

    @staticmethod
    def _send(due: list[_Due], now: float) -> None:
        batches: dict[Fanout, list[tuple[str, Message]]] = defaultdict(list)
        taken: list[LiveDeltas] = []
        try:
            for _, _, call, _ in due:
                messages = call.take(now)
                if messages:
                    taken.append(call)
                    batches[call.fanout].extend(messages)
            for fanout, messages in batches.items():
                fanout.publish_many(messages)
        finally:
            for call in taken:
                call.sent()


_publishers: dict[int, _Publisher] = {}
_publishers_lock = threading.Lock()


def _publisher() -> _Publisher:
    """This process's publisher (a forked pool child starts its own)."""
    pid = os.getpid()
    with _publishers_lock:
        if pid not in _publishers:
            _publishers[pid] = _Publisher()
        return _publishers[pid]
