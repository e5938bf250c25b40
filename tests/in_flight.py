"""Model calls all in flight at once, for the provider tests of connection reuse."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def all_in_flight(
    calls: int, call: Callable[[], T], received: Callable[[], int], gate: threading.Event
) -> list[T]:
    """`calls` calls of `call` from as many threads, answered only once every one of them
    has reached the server (`received()`: how many requests it has had; its replies wait
    for `gate`): their results."""
    before = received()
    with ThreadPoolExecutor(calls) as pool:
        futures = [pool.submit(call) for _ in range(calls)]
        deadline = time.monotonic() + 10
        while received() - before < calls and time.monotonic() < deadline:
            time.sleep(0.01)
        arrived = received() - before
        assert arrived == calls, f"{arrived} of {calls} calls reached the server at once"
        gate.set()
        return [future.result(10) for future in futures]
