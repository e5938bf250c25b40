"""Scheduled runs: Celery beat starts an agent run on a crontab or an interval.

A schedule is declared next to the agents (a module-level `Schedule` in a module
of `STEPWISE_AGENTS`) or in the Celery configuration (`stepwise_schedules`, a
list of `Schedule`s or of plain dicts with the same fields). Beat sends
`stepwise.scheduled_run` with the schedule's name and the tick it fires for:
the start of the interval window (aligned to the epoch) or the crontab minute.
The worker records the tick under a unique key, so a tick starts at most one
run even when two beats send it, then applies the overlap policy:

- `skip`: no new run while an earlier run of the schedule is unfinished;
- `queue`: the new run waits (queued) until the earlier ones have ended;
- `cancel_previous`: the earlier unfinished runs are cancelled, the new one starts.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from celery.schedules import crontab
from celery.schedules import schedule as interval
from sqlalchemy import text
from sqlmodel import col, select

from storage import TERMINAL, Run, ScheduleTick
from storage.models import utcnow
from storage.store import Db
from tasks import runs
from tasks.errors import ConfigError, UnknownAgent
from tasks.runtime import Runtime

log = logging.getLogger(__name__)

Overlap = Literal["skip", "queue", "cancel_previous"]
OVERLAPS = ("skip", "queue", "cancel_previous")
TASK = "stepwise.scheduled_run"
ENTRY_PREFIX = "stepwise.schedule:"
# A crontab fires at most once a minute: its ticks are minutes.
CRON_WINDOW = 60.0


@dataclass(frozen=True)
class Schedule:
    """A run of `agent` started by beat `every` so many seconds, or on a `cron` line.

    `input` is the run's input, or a function of the tick (a UTC datetime) that
    builds it when the tick fires. `overlap` says what a tick does while an
    earlier run of this schedule is unfinished: `skip`, `queue` or `cancel_previous`.
    """

    name: str
    agent: str
    input: str | Callable[[datetime], str]
    every: float | timedelta | None = None
    cron: str | crontab | None = None
    owner: str | None = None
    overlap: Overlap = "skip"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 100 or ":" in self.name:
            raise ConfigError(f"schedule name {self.name!r}: 1 to 100 characters, no ':'")
        if (self.every is None) == (self.cron is None):
            raise ConfigError(f"schedule {self.name!r}: give exactly one of every= and cron=")
        if self.every is not None and self.seconds < 1:
            raise ConfigError(f"schedule {self.name!r}: every= must be at least one second")
        if isinstance(self.cron, str):
            parse_cron(self.name, self.cron)  # a bad line fails here, not at the first tick
        if self.overlap not in OVERLAPS:
            raise ConfigError(f"schedule {self.name!r}: overlap is one of {', '.join(OVERLAPS)}")
        if not (isinstance(self.input, str) or callable(self.input)):
            raise ConfigError(f"schedule {self.name!r}: input is a string or a function")

    @property
    def seconds(self) -> float:
        """The interval in seconds (interval schedules only)."""
        every = self.every
        return every.total_seconds() if isinstance(every, timedelta) else float(every or 0)

    @property
    def window(self) -> float:
        """Seconds per tick: the interval, or a minute for a crontab."""
        return self.seconds if self.every is not None else CRON_WINDOW

    @property
    def parsed_cron(self) -> crontab | None:
        """The crontab of a cron schedule."""
        if isinstance(self.cron, str):
            return parse_cron(self.name, self.cron)
        return self.cron

    def celery_schedule(self) -> interval | crontab:
        """What beat needs to know when this schedule is due."""
        return self.parsed_cron or interval(timedelta(seconds=self.seconds))

    def describe(self) -> str:
        """`every 60 s` or `cron 0 3 * * *`, for listings."""
        if isinstance(self.cron, str):
            return f"cron {' '.join(self.cron.split())}"
        if self.cron is not None:
            return f"cron {self.cron!r}"
        return f"every {self.seconds:g} s"

    def input_for(self, tick: datetime) -> str:
        """The run's input for this tick."""
        return self.input if isinstance(self.input, str) else self.input(tick)


def parse_cron(name: str, line: str, now: datetime | None = None) -> crontab:
    """A five-field cron line (`minute hour day-of-month month day-of-week`) as a crontab
    (whose clock stands at `now` when given)."""
    fields = line.split()
    if len(fields) != 5:
        raise ConfigError(f"schedule {name!r}: cron {line!r} needs five fields")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
            **({"nowfun": lambda: now} if now is not None else {}),
        )
    except ValueError as error:
        raise ConfigError(f"schedule {name!r}: cron {line!r}: {error}") from None


def tick_of(window: float, at: datetime) -> datetime:
    """The tick `at` falls in: the start of its window, windows aligned to the epoch."""
    start = math.floor(at.timestamp() / window) * window
    return datetime.fromtimestamp(start, UTC)


def key_of(name: str, tick: datetime) -> str:
    """The idempotency key of the run a tick starts."""
    return f"schedule:{name}:{tick.astimezone(UTC).isoformat()}"


class Schedules:
    """The schedules a process knows: those of `STEPWISE_AGENTS` and of the Celery config."""

    def __init__(self, schedules: Iterable[Schedule]) -> None:
        self._by_name: dict[str, Schedule] = {}
        for found in schedules:
            if found.name in self._by_name and self._by_name[found.name] != found:
                raise ConfigError(f"two schedules are called {found.name!r}")
            self._by_name[found.name] = found

    @classmethod
    def load(cls, modules: Iterable[str], configured: Iterable[Any] = ()) -> Schedules:
        """Every module-level `Schedule` of the modules, then the configured ones."""
        found: list[Schedule] = []
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as error:
                raise ConfigError(f"cannot import {module_name!r}: {error}") from error
            found.extend(v for v in vars(module).values() if isinstance(v, Schedule))
        for entry in configured or ():
            if isinstance(entry, Schedule):
                found.append(entry)
            elif isinstance(entry, Mapping):
                try:
                    found.append(Schedule(**entry))
                except TypeError as error:
                    raise ConfigError(f"stepwise_schedules entry {entry!r}: {error}") from None
            else:
                raise ConfigError(f"stepwise_schedules holds {entry!r}: a Schedule or a dict")
        return cls(found)

    def get(self, name: str) -> Schedule:
        """The schedule called `name`; `ConfigError` if this process does not know it."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"no schedule called {name!r} on this worker") from None

    def __iter__(self) -> Any:
        return iter(sorted(self._by_name.values(), key=lambda s: s.name))

    def beat_entries(self) -> dict[str, dict[str, Any]]:
        """`beat_schedule` entries: the schedule's name and window go on the wire, nothing else."""
        return {
            ENTRY_PREFIX + s.name: {
                "task": TASK,
                "schedule": s.celery_schedule(),
                "kwargs": {"schedule": s.name, "window": s.window},
            }
            for s in self
        }


class Waiting(Exception):
    """A queued run of a `queue` schedule waits for an earlier run of the schedule to end."""


@dataclass(frozen=True)
class Fired:
    """What a tick did: `started` (a run to send), `queued`, `skipped` or `duplicate`."""

    outcome: str
    run_id: str | None = None
    behind: tuple[str, ...] = ()


def fire(rt: Runtime, schedule: Schedule, tick: datetime) -> Fired:
    """Record the tick and apply the overlap policy, in one transaction."""
    with rt.store.transaction() as tx:
        _lock(tx.db, schedule.name)
        if tx.db.orm.get(ScheduleTick, (schedule.name, tick)) is not None:
            return Fired("duplicate")
        earlier = _unfinished(tx.db, schedule.name)
        if earlier and schedule.overlap == "skip":
            tx.db.orm.add(ScheduleTick(schedule=schedule.name, tick=tick, outcome="skipped"))
            return Fired("skipped", behind=tuple(earlier))
        if schedule.overlap == "cancel_previous":
            for run_id in earlier:
                runs.cancel(tx, run_id)
        new = runs.validate(
            rt.agents,
            agent=schedule.agent,
            input=schedule.input_for(tick),
            idempotency_key=key_of(schedule.name, tick),
            metadata={**schedule.metadata, "schedule": schedule.name, "tick": tick.isoformat()},
            owner=schedule.owner,
            max_input_chars=rt.settings.max_input_chars,
        )
        run_id, created = runs.record(tx, new)
        if not created:
            return Fired("duplicate", run_id)
        # A `queued` run waits for the earlier ones when it starts (`waiting_behind`).
        outcome = "queued" if schedule.overlap == "queue" and earlier else "started"
        tick_row = ScheduleTick(schedule=schedule.name, tick=tick, outcome=outcome, run_id=run_id)
        tx.db.orm.add(tick_row)
    return Fired(outcome, run_id, tuple(earlier))


def _lock(db: Db, name: str) -> None:
    """Take turns per schedule: two ticks of one schedule never decide at once."""
    if db.dialect == "postgresql":
        key = ENTRY_PREFIX + name
        db.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def _unfinished(db: Db, name: str, before: datetime | None = None) -> list[str]:
    """The unfinished runs the schedule started, oldest tick first (ticks before `before`)."""
    query = (
        select(Run.id)
        .join(ScheduleTick, col(ScheduleTick.run_id) == col(Run.id))
        .where(ScheduleTick.schedule == name, col(Run.status).not_in(TERMINAL))
        .order_by(col(ScheduleTick.tick))
    )
    if before is not None:
        query = query.where(col(ScheduleTick.tick) < before)
    return list(db.execute(query).scalars())


def waiting_behind(rt: Runtime, run_id: str) -> str | None:
    """For a queued run a `queue` schedule started: the earlier run it waits for, if any.

    The wait counts as progress, so the watchdog leaves the waiting run alone.
    """
    with rt.store.reading() as db:  # most runs have no schedule: one indexed read
        mine = db.exec(select(ScheduleTick).where(ScheduleTick.run_id == run_id)).first()
    if mine is None or mine.outcome != "queued":
        return None
    with rt.store.transaction() as tx:
        run = runs.locked_run(tx.db, run_id)
        if run.status != "queued":
            return None
        earlier = _unfinished(tx.db, mine.schedule, before=mine.tick)
        if not earlier:
            return None
        tx.write(run, progressed_at=utcnow())
        return earlier[0]


@dataclass(frozen=True)
class Listed:
    """A schedule as `stepwise schedules` shows it."""

    schedule: Schedule
    next_fire: datetime
    last_tick: ScheduleTick | None
    last_run: Run | None


def overview(rt: Runtime, schedules: Schedules, now: datetime | None = None) -> list[Listed]:
    """Each schedule with its next tick, its last recorded tick and its last run."""
    now = now or utcnow()
    listed = []
    with rt.store.reading() as db:
        for s in schedules:
            last = db.exec(
                select(ScheduleTick)
                .where(ScheduleTick.schedule == s.name)
                .order_by(col(ScheduleTick.tick).desc())
            ).first()
            started = db.exec(
                select(Run)
                .join(ScheduleTick, col(ScheduleTick.run_id) == col(Run.id))
                .where(ScheduleTick.schedule == s.name)
                .order_by(col(ScheduleTick.tick).desc())
            ).first()
            listed.append(Listed(s, next_fire(s, now), last, started))
    return listed


def next_fire(schedule: Schedule, now: datetime) -> datetime:
    """The schedule's next tick after `now`."""
    cron = parse_cron(schedule.name, schedule.cron, now) if isinstance(schedule.cron, str) else None
    cron = cron or schedule.parsed_cron
    if cron is not None:
        # The next matching minute after `now`: a crontab does not depend on its history.
        wait: timedelta = cron.remaining_estimate(tick_of(CRON_WINDOW, now))
        return now + wait
    # Ticks are windows aligned to the epoch: the next one starts where this one ends.
    return tick_of(schedule.seconds, now) + timedelta(seconds=schedule.seconds)


def check_agents(rt: Runtime, schedules: Schedules) -> list[str]:
    """Schedules whose agent this process does not know, as sentences."""
    problems = []
    for s in schedules:
        try:
            rt.agents.get(s.agent)
        except UnknownAgent as error:
            problems.append(f"schedule {s.name!r}: {error}")
    return problems
