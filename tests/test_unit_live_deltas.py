"""A model call's live deltas: the first at once, then at most one message per interval,
joined, published by the process's publisher thread; `close` waits until all are out."""

from __future__ import annotations

import threading
from typing import Any

from storage.deltas import LiveDeltas, joined
from storage.fanout import Fanout, LocalFanout, Message
from tasks.settings import Settings
from tests.test_integration_support import wait_until

WAIT = 10.0  # seconds: generous, a slow machine's thread switch is never this long


def _text(text: str, index: int = 0, kind: str = "text", attempt: int = 1) -> dict[str, Any]:
    return {"kind": kind, "text": text, "index": index, "attempt": attempt}


class Recorded(LocalFanout):
    """The in-process fan-out, keeping what was published, each batch as one list."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, Message]]] = []
        self.senders: list[threading.Thread] = []
        self._waited = 0

    def publish_many(self, messages: Any) -> None:
        self.batches.append(list(messages))
        self.senders.append(threading.current_thread())

    def texts(self) -> list[str]:
        return [payload["text"] for batch in self.batches for _, payload in batch]

    def wait(self) -> None:
        """Until one batch more than at the last `wait` has been published."""
        self._waited += 1
        self.wait_for(self._waited)

    def wait_for(self, batches: int) -> None:
        wait_until(f"{batches} batch(es)", lambda: len(self.batches) >= batches, within=WAIT)

    @staticmethod
    def wait_for_sent(call: LiveDeltas) -> None:
        """Until the publisher has marked what it took of `call` as sent."""
        wait_until("the publisher to finish sending", lambda: not call._sending, within=WAIT)


def _call(fanout: Fanout, interval: float, run_id: str = "run-1") -> LiveDeltas:
    return LiveDeltas(fanout, run_id, lambda data: data, interval)


def test_the_first_delta_of_a_call_goes_out_at_once() -> None:
    fanout = Recorded()
    live = _call(fanout, interval=3600)

    live.add(_text("Hel"))

    fanout.wait()
    assert fanout.batches == [[("run-1", _text("Hel"))]]


def test_deltas_within_the_interval_are_held_then_go_out_joined_when_the_call_closes() -> None:
    fanout = Recorded()
    live = _call(fanout, interval=3600)  # nothing more is due before the call closes
    live.add(_text("Hel"))
    fanout.wait()

    for piece in ("lo, ", "wor", "ld"):
        live.add(_text(piece))
    assert fanout.texts() == ["Hel"]
    live.close()

    assert fanout.texts() == ["Hel", "lo, world"]


def test_held_deltas_go_out_when_the_interval_has_passed_without_waiting_for_the_close() -> None:
    fanout = Recorded()
    live = _call(fanout, interval=0.05)
    live.add(_text("a"))
    fanout.wait()

    live.add(_text("b"))
    live.add(_text("c"))

    fanout.wait()
    assert fanout.texts() == ["a", "bc"]
    live.close()  # nothing is left to publish
    assert fanout.texts() == ["a", "bc"]


def test_calls_due_while_the_publisher_was_busy_go_out_together_in_one_batch() -> None:
    class Slow(Recorded):
        """Its first batch waits until the test lets it go."""

        def __init__(self) -> None:
            super().__init__()
            self.sending, self.go = threading.Event(), threading.Event()

        def publish_many(self, messages: Any) -> None:
            self.sending.set()
            assert self.go.wait(WAIT)
            super().publish_many(messages)

    fanout = Slow()
    first, second = _call(fanout, 0, "run-1"), _call(fanout, 0, "run-2")
    first.add(_text("1a"))
    assert fanout.sending.wait(WAIT)
    first.add(_text("1b"))  # the publisher is busy sending 1a: these wait for it
    second.add(_text("2a"))
    first.add(_text("1c"))

    fanout.go.set()
    fanout.wait_for(2)

    assert fanout.batches == [
        [("run-1", _text("1a"))],
        [("run-1", _text("1b1c")), ("run-2", _text("2a"))],
    ]


def test_with_no_interval_each_delta_goes_out_as_soon_as_the_publisher_can() -> None:
    fanout = Recorded()
    live = _call(fanout, interval=0)

    for piece in ("x", "y", "z"):
        live.add(_text(piece))
        fanout.wait()

    assert fanout.texts() == ["x", "y", "z"]


def test_only_neighbouring_fragments_of_one_part_and_attempt_are_joined() -> None:
    deltas = [
        _text("I will "),
        _text("look."),
        _text('{"key"', index=1, kind="tool_arguments"),
        _text(': "a"}', index=1, kind="tool_arguments"),
        _text("More", index=2),
        _text(" text", index=2, attempt=2),
        _text("!", index=2, attempt=2),
    ]

    assert joined(deltas) == [
        _text("I will look."),
        _text('{"key": "a"}', index=1, kind="tool_arguments"),
        _text("More", index=2),
        _text(" text!", index=2, attempt=2),
    ]


def test_a_call_with_nothing_on_its_way_sends_what_it_holds_itself_when_it_closes() -> None:
    fanout = Recorded()
    live = _call(fanout, interval=3600)
    live.add(_text("a"))
    fanout.wait_for(1)
    fanout.wait_for_sent(live)
    live.add(_text("b"))

    live.close()

    assert fanout.texts() == ["a", "b"]
    assert fanout.senders[0] is not threading.current_thread()  # the publisher's
    assert fanout.senders[1] is threading.current_thread()


def test_closing_a_call_that_streamed_nothing_publishes_nothing() -> None:
    fanout = Recorded()

    _call(fanout, interval=0.05).close()

    assert fanout.batches == []


def test_a_publish_that_fails_does_not_stop_the_publisher() -> None:
    class Failing(Recorded):
        def publish_many(self, messages: Any) -> None:
            if not self.batches:
                self.batches.append([])
                raise RuntimeError("the fan-out broke")
            super().publish_many(messages)

    fanout = Failing()
    live = _call(fanout, interval=0)
    live.add(_text("lost"))
    live.close()

    live.add(_text("kept"))
    live.close()

    assert fanout.texts() == ["kept"]


def test_the_interval_is_50_ms_unless_stepwise_delta_interval_says_otherwise() -> None:
    assert Settings.from_env({}).delta_interval == 0.05
    assert Settings.from_env({"STEPWISE_DELTA_INTERVAL": "0"}).delta_interval == 0.0
    assert Settings.from_env({"STEPWISE_DELTA_INTERVAL": "0.2"}).delta_interval == 0.2
