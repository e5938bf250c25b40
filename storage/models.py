"""SQLModel tables: runs, steps, the append-only event log, threads and their messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JSONType = JSON().with_variant(JSONB(), "postgresql")

RUN_STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled", "timed_out")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
STEP_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    """Now, timezone-aware."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """`moment` with UTC attached when the database handed it back naive (SQLite)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _when(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


def _json(default: Any) -> Any:
    return Field(default_factory=default, sa_column=Column(JSONType, nullable=False))


class Thread(SQLModel, table=True):
    """A conversation that successive runs continue."""

    __tablename__ = "stepwise_threads"

    id: str = Field(primary_key=True, max_length=200)
    owner: str | None = Field(default=None, max_length=200)  # set by its first run
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Run(SQLModel, table=True):
    """One execution of an agent on an input."""

    __tablename__ = "stepwise_runs"

    id: str = Field(primary_key=True, max_length=36)
    agent: str = Field(max_length=200)
    status: str = Field(default="queued", max_length=16, index=True)
    input: str = Field(sa_column=Column(Text, nullable=False))
    thread_id: str = Field(foreign_key="stepwise_threads.id", index=True, max_length=200)
    owner: str | None = Field(default=None, index=True, max_length=200)  # None: anyone's
    idempotency_key: str | None = Field(default=None, unique=True, max_length=200)
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSONType, nullable=False)
    )
    result: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    cancel_requested: bool = False
    last_seq: int = 0
    usage: dict[str, int] = _json(dict)
    cost_usd: float | None = None  # the sum over model steps that have a price
    progressed_at: datetime | None = _when()  # the newest event's time (the watchdog reads it)
    resumes: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    started_at: datetime | None = _when()
    finished_at: datetime | None = _when()
    deadline_at: datetime | None = _when()


class Step(SQLModel, table=True):
    """One model call or one tool call of a run; one Celery task execution."""

    __tablename__ = "stepwise_steps"
    __table_args__ = (UniqueConstraint("run_id", "number", name="uq_step_number"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="stepwise_runs.id", index=True, max_length=36)
    number: int
    kind: str = Field(max_length=8)
    status: str = Field(default="pending", max_length=16)
    call_id: str | None = Field(default=None, max_length=200)
    tool_name: str | None = Field(default=None, max_length=200)
    arguments: str | None = Field(default=None, sa_column=Column(Text))
    effect_id: str | None = Field(default=None, max_length=36)  # set before a tool first runs
    output: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    usage: dict[str, int] | None = Field(default=None, sa_column=Column(JSONType))
    cost_usd: float | None = None  # None: the price table does not know the model
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    lease_until: datetime | None = _when()
    queue: str | None = Field(default=None, max_length=200)
    task_id: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    started_at: datetime | None = _when()
    finished_at: datetime | None = _when()


class Event(SQLModel, table=True):
    """An append-only record of what happened; `seq` is 1, 2, 3… per run, without gaps."""

    __tablename__ = "stepwise_events"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_event_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="stepwise_runs.id", index=True, max_length=36)
    seq: int
    type: str = Field(max_length=64)
    step: int | None = None
    data: dict[str, Any] = _json(dict)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ThreadMessage(SQLModel, table=True):
    """One message of a thread's history, in order."""

    __tablename__ = "stepwise_messages"
    __table_args__ = (UniqueConstraint("thread_id", "position", name="uq_message_position"),)

    id: int | None = Field(default=None, primary_key=True)
    thread_id: str = Field(foreign_key="stepwise_threads.id", index=True, max_length=200)
    position: int
    run_id: str = Field(foreign_key="stepwise_runs.id", max_length=36)
    role: str = Field(max_length=16)
    parts: list[dict[str, Any]] = _json(list)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ScheduleTick(SQLModel, table=True):
    """One tick of a beat schedule: its key is unique, so a tick starts at most one run."""

    __tablename__ = "stepwise_schedule_ticks"

    schedule: str = Field(primary_key=True, max_length=100)
    tick: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    # started; queued (behind an unfinished run); skipped (an earlier run was unfinished)
    outcome: str = Field(max_length=16)
    run_id: str | None = Field(
        default=None, foreign_key="stepwise_runs.id", index=True, max_length=36
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
