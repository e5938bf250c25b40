"""Daemon threads for tool calls, reused from one call to the next.

A tool call runs in a thread of its own so that its step can stop waiting for it
(`tasks.tool_steps`). Starting a thread for every call cost about 125 µs of CPU, where
handing the call to a waiting thread costs about 65 (2% of a tool step's CPU), so a
thread whose call has finished waits for the next one. A call never waits for a
thread: with none idle a new one starts, so a call abandoned past its timeout holds
on to its own thread only. The threads are daemons, as an abandoned call must not
keep a worker from exiting, and an idle one ends after a minute.
(`concurrent.futures.ThreadPoolExecutor` fits neither: its threads are capped, and the
interpreter joins them at exit.)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0


class Threads:
    """Run calls on daemon threads, each reused once its call is done."""

    def __init__(self, idle: float = IDLE_SECONDS) -> None:
        self.idle = idle
        self._lock = threading.Lock()
        self._waiting = 0  # threads waiting for a call, and not promised one yet
        self._calls: queue.Queue[Callable[[], None]] = queue.Queue()

    def run(self, call: Callable[[], None]) -> None:
        """Start `call()` on an idle thread, or on a new one if none is idle."""
        with self._lock:
            if self._waiting:
                self._waiting -= 1
                self._calls.put(call)
                return
        thread = threading.Thread(target=self._serve, args=(call,), daemon=True)
        thread.start()

    @property
    def idle_threads(self) -> int:
        """How many threads wait for a call now."""
        with self._lock:
            return self._waiting

    def _serve(self, call: Callable[[], None]) -> None:
        while True:
            try:
                call()
            except BaseException:  # a call reports its own errors; this keeps the thread
                log.exception("a call on a tool thread raised")
            with self._lock:
                self._waiting += 1
            try:
                call = self._calls.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:  # a call put meanwhile was promised to a waiting thread
                    try:
                        call = self._calls.get_nowait()
                    except queue.Empty:
                        self._waiting -= 1
                        return

    def _forget(self) -> None:
        """In a forked child: the parent's threads do not exist here."""
        self._lock = threading.Lock()
        self._waiting = 0
        self._calls = queue.Queue()


THREADS = Threads()
os.register_at_fork(after_in_child=THREADS._forget)
