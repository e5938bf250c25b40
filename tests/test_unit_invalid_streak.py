"""How many tool rounds in a row held an invalid call: the count that fails a run."""

from __future__ import annotations

import pytest

from tasks.loop import invalid_streak


@pytest.mark.parametrize(
    ("rounds", "streak"),
    [
        ([], 0),
        ([[]], 0),
        ([[False]], 0),
        ([[True]], 1),
        ([[True], [True]], 2),
        ([[True], [False]], 0),
        ([[False], [True]], 1),
        ([[True], [False, True], [True, True]], 3),
        ([[True, False]], 1),  # one bad call among good ones still asks for a correction
        ([[True], [], [True]], 2),  # a turn without tools (a pause) does not break it
        ([[True], [True], []], 2),  # nor does the model step about to run
    ],
)
def test_the_streak_counts_rounds_with_an_invalid_call_back_from_the_latest(
    rounds: list[list[bool]], streak: int
) -> None:
    assert invalid_streak(rounds) == streak
