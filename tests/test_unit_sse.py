"""Server-sent events read from a streamed body's lines, as the format says."""

from __future__ import annotations

from providers.base import sse_events


def test_each_event_is_its_name_and_its_data_lines_joined() -> None:
    body = [
        ": a comment, say a keep-alive",
        'data: {"a": 1}',
        "",
        "",  # blank lines between events are nothing
        "event: message_start",
        "id: 7",  # other fields are skipped
        'data:{"b": 2}',  # no space after the colon
        "",
        "data: first line",
        "data:  second, with one space kept",
        "",
        "event: ping",  # an event with no data is nothing
        "",
        "data: [DONE]",
        "",
    ]

    assert list(sse_events(body)) == [
        ("", '{"a": 1}'),
        ("message_start", '{"b": 2}'),
        ("", "first line\n second, with one space kept"),
        ("", "[DONE]"),
    ]


def test_an_event_the_body_ends_in_the_middle_of_is_not_an_event() -> None:
    assert list(sse_events(["data: whole", "", "event: error", 'data: {"type": "er'])) == [
        ("", "whole")
    ]
