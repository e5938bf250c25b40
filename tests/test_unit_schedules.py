"""Schedules: declaring them, their ticks and keys, and a tick sent twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.errors import ConfigError
from tasks.runtime import current_runtime
from tasks.schedules import (
    ENTRY_PREFIX,
    TASK,
    Schedule,
    Schedules,
    fire,
    key_of,
    next_fire,
    tick_of,
)

NOW = datetime(2026, 11, 21, 17, 3, 20, 250000, tzinfo=UTC)


def test_a_tick_is_the_start_of_its_window_with_windows_aligned_to_the_epoch() -> None:
    assert tick_of(1, NOW) == datetime(2026, 11, 21, 17, 3, 20, tzinfo=UTC)
    assert tick_of(60, NOW) == datetime(2026, 11, 21, 17, 3, tzinfo=UTC)
    assert tick_of(3600, NOW) == datetime(2026, 11, 21, 17, tzinfo=UTC)
    # Two beats firing the same window at different moments agree on its tick.
    assert tick_of(60, NOW + timedelta(seconds=39)) == tick_of(60, NOW - timedelta(seconds=20))


def test_the_key_of_a_tick_names_the_schedule_and_the_tick_in_utc() -> None:
    assert key_of("nightly", tick_of(60, NOW)) == "schedule:nightly:2026-11-21T17:03:00+00:00"


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("*/5 * * * *", datetime(2026, 11, 21, 17, 5, tzinfo=UTC)),
        ("0 3 * * *", datetime(2026, 11, 22, 3, 0, tzinfo=UTC)),
        ("3 17 * * *", datetime(2026, 11, 22, 17, 3, tzinfo=UTC)),
        ("0 0 1 1 *", datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_a_cron_schedule_fires_next_at_the_next_matching_minute(
    cron: str, expected: datetime
) -> None:
    schedule = Schedule("s", agent="demo", input="x", cron=cron)

    assert next_fire(schedule, NOW) == expected
    assert schedule.window == 60
    assert schedule.describe() == f"cron {cron}"


def test_an_interval_schedule_fires_next_where_the_current_window_ends() -> None:
    schedule = Schedule("s", agent="demo", input="x", every=timedelta(minutes=15))

    assert next_fire(schedule, NOW) == datetime(2026, 11, 21, 17, 15, tzinfo=UTC)
    assert schedule.describe() == "every 900 s"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"every": 60, "cron": "* * * * *"}, "exactly one of every= and cron="),
        ({}, "exactly one of every= and cron="),
        ({"every": 0.5}, "at least one second"),
        ({"cron": "* * * *"}, "needs five fields"),
        ({"cron": "61 * * * *"}, "cron '61 * * * *'"),
        ({"every": 60, "overlap": "wait"}, "overlap is one of skip, queue, cancel_previous"),
        ({"every": 60, "name": "a:b"}, "no ':'"),
        ({"every": 60, "input": 42}, "input is a string or a function"),
    ],
)
def test_a_badly_declared_schedule_is_refused_with_the_reason(
    fields: dict[str, object], message: str
) -> None:
    declared: dict[str, object] = {"name": "s", "agent": "demo", "input": "x", **fields}

    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        Schedule(**declared)  # type: ignore[arg-type]


def test_an_input_function_builds_the_input_from_the_tick() -> None:
    schedule = Schedule("s", agent="demo", input=lambda tick: f"day {tick:%d}", every=60)

    assert schedule.input_for(NOW) == "day 21"


def test_configured_dicts_and_module_schedules_load_and_two_of_one_name_are_refused() -> None:
    loaded = Schedules.load([], [{"name": "a", "agent": "demo", "input": "x", "every": 5}])

    assert [s.name for s in loaded] == ["a"]
    with pytest.raises(ConfigError, match="two schedules are called 'a'"):
        Schedules.load([], [{"name": "a", "agent": "demo", "input": "x", "every": 5},
                            {"name": "a", "agent": "demo", "input": "y", "every": 5}])  # fmt: skip
    with pytest.raises(ConfigError, match="a Schedule or a dict"):
        Schedules.load([], ["a"])


def test_a_beat_entry_carries_the_schedule_name_and_window_and_never_the_input() -> None:
    schedules = Schedules([Schedule("s", agent="demo", input="secret prompt", cron="0 3 * * *")])

    [(name, entry)] = schedules.beat_entries().items()

    assert name == f"{ENTRY_PREFIX}s"
    assert entry["task"] == TASK
    assert entry["kwargs"] == {"schedule": "s", "window": 60.0}


def test_a_tick_fired_twice_as_after_a_beat_restart_starts_one_run(
    embedded: dict[str, str],
) -> None:
    rt = current_runtime()
    schedule = Schedule("twice", agent="demo", input="What is 2 + 2?", every=60, owner="ops")
    tick = tick_of(60, NOW)

    first = fire(rt, schedule, tick)
    again = fire(rt, schedule, tick)

    assert first.outcome == "started" and first.run_id is not None
    assert again.outcome == "duplicate"
    assert fire(rt, schedule, tick + timedelta(minutes=1)).outcome == "skipped"  # still queued
