"""A model call's live deltas, coalesced: at most one publish per interval.

A model streams a token every few milliseconds, and a publish to Redis costs about
100 µs of the worker's CPU: published one by one, a long answer's deltas would cost
more than every other part of its step. `LiveDeltas` publishes a delta at once when
the call published nothing for `interval` seconds, and otherwise holds it; what it
holds goes out, neighbours of one part joined into one delta, when the interval has
passed (from a timer thread shared by the process) or when the call ends (`close`),
whichever is first. A follower sees the same text in fewer, longer fragments, never
more than `interval` late.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

Publish = Callable[[dict[str, Any]], None]

log = logging.getLogger(__name__)


class LiveDeltas:
    """The deltas of one model call (`add`), published through `publish`, coalesced.

    `close` publishes what is held; call it before anything that must follow every
    delta (the step's record, a retraction). `interval` 0 publishes each at once.
    """

    def __init__(self, publish: Publish, interval: float) -> None:
        self._publish = publish
        self._interval = interval
        self._lock = threading.Lock()
        self._held: list[dict[str, Any]] = []
        self._last = -float("inf")  # monotonic time of the last publish

    def add(self, data: dict[str, Any]) -> None:
        """One delta: `kind`, `text`, `index`, `attempt`."""
        with self._lock:
            now = time.monotonic()
            if not self._held and now - self._last >= self._interval:
                self._send([data], now)
                return
            self._held.append(data)
            if len(self._held) == 1:
                _timer().at(self._last + self._interval, self.flush)

    def flush(self) -> None:
        """Publish what is held now."""
        with self._lock:
            if self._held:
                held, self._held = self._held, []
                self._send(held, time.monotonic())

    close = flush

    def _send(self, held: list[dict[str, Any]], now: float) -> None:
        self._last = now
        for data in joined(held):
            self._publish(data)


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


class _Timer:
    """One daemon thread that calls each callback at its (monotonic) time."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        threading.Thread(target=self._run, name="stepwise-deltas", daemon=True).start()

    def at(self, when: float, callback: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._due, (when, next(self._order), callback))
            if self._due[0][2] is callback:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception:  # the thread serves every call of the process: it goes on
                log.exception("could not publish held deltas")


_timers: dict[int, _Timer] = {}
_timers_lock = threading.Lock()


def _timer() -> _Timer:
    """This process's timer (a forked pool child starts its own)."""
    pid = os.getpid()
    with _timers_lock:
        if pid not in _timers:
            _timers[pid] = _Timer()
        return _timers[pid]
