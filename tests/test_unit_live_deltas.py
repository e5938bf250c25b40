"""A model call's live deltas: published at once after a quiet spell, else held and joined."""

from __future__ import annotations

import threading
from typing import Any

from storage.deltas import LiveDeltas, joined
from tasks.settings import Settings


def _text(text: str, index: int = 0, kind: str = "text", attempt: int = 1) -> dict[str, Any]:
    return {"kind": kind, "text": text, "index": index, "attempt": attempt}


class Published(list[dict[str, Any]]):
    """What a `LiveDeltas` published, with an event set on each publish."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()

    def __call__(self, data: dict[str, Any]) -> None:
        self.append(data)
        self.arrived.set()


def test_the_first_delta_of_a_call_goes_out_at_once() -> None:
    published = Published()
    live = LiveDeltas(published, interval=3600)

    live.add(_text("Hel"))

    assert published == [_text("Hel")]


def test_deltas_within_the_interval_are_held_then_go_out_joined_when_the_call_ends() -> None:
    published = Published()
    live = LiveDeltas(published, interval=3600)  # the timer never fires in this test

    for piece in ("Hel", "lo, ", "world"):
        live.add(_text(piece))
    assert published == [_text("Hel")]
    live.close()

    assert published == [_text("Hel"), _text("lo, world")]


def test_held_deltas_go_out_when_the_interval_has_passed_without_waiting_for_the_end() -> None:
    published = Published()
    live = LiveDeltas(published, interval=0.05)
    live.add(_text("a"))
    published.arrived.clear()

    live.add(_text("b"))
    live.add(_text("c"))

    assert published.arrived.wait(10), "the timer did not publish the held deltas"
    assert published == [_text("a"), _text("bc")]
    live.close()  # nothing is left to publish
    assert published == [_text("a"), _text("bc")]


def test_with_no_interval_every_delta_goes_out_as_it_comes() -> None:
    published = Published()
    live = LiveDeltas(published, interval=0)

    for piece in ("x", "y", "z"):
        live.add(_text(piece))

    assert [d["text"] for d in published] == ["x", "y", "z"]


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


def test_closing_a_call_that_streamed_nothing_publishes_nothing() -> None:
    published = Published()

    LiveDeltas(published, interval=0.05).close()

    assert published == []


def test_the_interval_is_50_ms_unless_stepwise_delta_interval_says_otherwise() -> None:
    assert Settings.from_env({}).delta_interval == 0.05
    assert Settings.from_env({"STEPWISE_DELTA_INTERVAL": "0"}).delta_interval == 0.0
    assert Settings.from_env({"STEPWISE_DELTA_INTERVAL": "0.2"}).delta_interval == 0.2
