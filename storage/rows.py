"""The rows a step decides on: its run and its steps, read with Core as plain objects.

A step locks its run (and its steps), reads a few columns and writes a few back by
key (`Tx.write`). Loading those rows as ORM objects cost more than the statement
that read them: an instance state, an identity map entry and a loader pass per
row, then the commit's bookkeeping of every loaded object. Rows are frozen: a
column changes only through `Tx.write`, which writes it, so nothing set on a row
can be lost. The ORM models stay the schema, and what the HTTP API and the client
read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

from sqlalchemy import Column, Table, bindparam, case, func, inspect, null, or_, select

from storage.models import Run, Step

if TYPE_CHECKING:
    from storage.store import Db

RUNS: Table = Run.__table__  # type: ignore[attr-defined]
STEPS: Table = Step.__table__  # type: ignore[attr-defined]


class _Row:
    """A row as attributes named as the model's. A column the statement did not read
    raises `AttributeError` when read."""

    __slots__ = ()
    table: ClassVar[Table]
    columns: ClassVar[dict[str, str]]  # attribute name: column name

    @classmethod
    def of(cls, names: Sequence[str], values: Sequence[Any]) -> Self:
        """A row with these attributes, from a result row's values in the same order."""
        row = cls.__new__(cls)
        row.take(zip(names, values, strict=True))
        return row

    def take(self, values: Iterable[tuple[str, Any]]) -> None:
        """Take these (name, value) pairs as the row's values: what `Tx.write` wrote,
        or a fresh read of the row."""
        for name, value in values:
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True, eq=False, init=False)
class RunRow(_Row):
    """A `Run` row; see `Run` for what each column means."""

    id: str
    agent: str
    status: str
    input: str
    thread_id: str
    owner: str | None
    idempotency_key: str | None
    meta: dict[str, Any]
    result: str | None
    error: str | None
    cancel_requested: bool
    last_seq: int
    usage: dict[str, int]
    cost_usd: float | None
    progressed_at: datetime | None
    resumes: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None


@dataclass(frozen=True, slots=True, eq=False, init=False)
class StepRow(_Row):
    """A `Step` row; see `Step` for what each column means."""

    id: int
    run_id: str
    number: int
    kind: str
    status: str
    call_id: str | None
    tool_name: str | None
    arguments: str | None
    effect_id: str | None
    output: dict[str, Any] | None
    usage: dict[str, int] | None
    cost_usd: float | None
    error: str | None
    attempts: int
    lease_until: datetime | None
    queue: str | None
    task_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _mapped(model: Any) -> dict[str, Column[Any]]:
    return {attr.key: attr.columns[0] for attr in inspect(model).column_attrs}


_RUN = _mapped(Run)
_STEP = _mapped(Step)
RunRow.table, RunRow.columns = RUNS, {name: c.key for name, c in _RUN.items()}
StepRow.table, StepRow.columns = STEPS, {name: c.key for name, c in _STEP.items()}

# The run's columns a step never reads: one statement of a run and its steps carries the
# run's columns on every step's row, and its input (any size) would be read once per step
# for every model step. Reading one of them from the run it returns raises.
STEP_UNREAD = frozenset(
    {
        "input",
        "owner",
        "idempotency_key",
        "meta",
        "result",
        "error",
        "resumes",
        "created_at",
        "started_at",
        "finished_at",
        "progressed_at",
    }
)
_RUN_NAMES = tuple(_RUN)
_RUN_READ = tuple(name for name in _RUN if name not in STEP_UNREAD)
_STEP_NAMES = tuple(_STEP)

# Built once: every step locks its run, and building a statement costs as much as a
# third of running it.
_LOCK_RUN = select(*_RUN.values()).where(RUNS.c.id == bindparam("run_id")).with_for_update()


def _locking(*columns: Any) -> Any:
    """These columns of the run joined with its steps, in the steps' order, every row
    locked: the run's first (the order of the FROM list)."""
    return (
        select(*columns)
        .select_from(RUNS.join(STEPS, STEPS.c.run_id == RUNS.c.id))
        .where(RUNS.c.id == bindparam("run_id"))
        .order_by(STEPS.c.number)
        .with_for_update()
    )


_LOCK_RUN_AND_STEP = _locking(*(_RUN[name] for name in _RUN_READ), *_STEP.values()).where(
    STEPS.c.number == bindparam("number")
)
# A model step decides on the outputs of its round: the model step before it (whose tool
# calls the round answers) and the steps after that one. Of the earlier steps it needs
# only their kinds and statuses, and which tool calls were invalid.
_EARLIER = STEPS.alias("earlier")
_ROUND_BEGINS = (
    select(func.max(_EARLIER.c.number))
    .where(
        _EARLIER.c.run_id == bindparam("run_id"),
        _EARLIER.c.kind == "model",
        _EARLIER.c.number < bindparam("number"),
    )
    .scalar_subquery()
)
_IN_ROUND = STEPS.c.number >= func.coalesce(_ROUND_BEGINS, 0)
_FIRST_STEP = (
    select(func.min(_EARLIER.c.number))
    .where(_EARLIER.c.run_id == bindparam("run_id"))
    .scalar_subquery()
)
# Each JSON value costs a parse as the row is fetched: the round's outputs and usage, an
# invalid call's output, and the run's usage on the first row only (the rest repeat it).
_ROUND_READ = {
    **{name: _RUN[name] for name in _RUN_READ},
    "usage": case((STEPS.c.number == _FIRST_STEP, RUNS.c.usage), else_=null()).label("run_usage"),
}
_ROUND_STEP = {
    **_STEP,
    "output": case(
        (or_(_IN_ROUND, STEPS.c.output["invalid"].as_boolean()), STEPS.c.output), else_=null()
    ).label("output"),
    "usage": case((_IN_ROUND, STEPS.c.usage), else_=null()).label("usage"),
}
_LOCK_RUN_AND_ROUND = _locking(*_ROUND_READ.values(), *_ROUND_STEP.values())
_STEPS = select(*_STEP.values()).where(STEPS.c.run_id == bindparam("run_id"))
_ALL_STEPS = _STEPS.order_by(STEPS.c.number)
_SOME_STEPS = _ALL_STEPS.where(STEPS.c.number.in_(bindparam("numbers", expanding=True)))


def hold(db: Db, run: RunRow) -> RunRow:
    """Note that this transaction owns `run`'s row (locked, or inserted by it).

    Events of a held run take their numbers from the row in memory, and the counter
    is written with the run's other columns when the transaction ends (`Tx.write`).
    """
    db.held[run.id] = run
    return run


def held(db: Db, run_id: str) -> RunRow | None:
    """The run this transaction holds with that id, if it holds it."""
    return db.held.get(run_id)


def _held_fresh(db: Db, run_id: str, names: Sequence[str], values: Sequence[Any]) -> RunRow:
    """Hold the run just read: the row held already takes the fresh values, so that
    whoever holds it sees them."""
    run = held(db, run_id)
    if run is None:
        return hold(db, RunRow.of(names, values))
    run.take(zip(names, values, strict=True))
    return run


def lock_run(db: Db, run_id: str) -> RunRow | None:
    """The run with its row locked until the transaction ends, read fresh; None if absent.

    A run this transaction already holds (locked, or inserted) is returned as it is.
    """
    run = held(db, run_id)
    if run is not None:
        return run
    found = db.execute(_LOCK_RUN, {"run_id": run_id}).first()
    return _held_fresh(db, run_id, _RUN_NAMES, found) if found is not None else None


def _run_and_steps(
    db: Db, run_id: str, found: Sequence[Sequence[Any]]
) -> tuple[RunRow, list[StepRow]] | None:
    """The held run and its steps from rows of the run's columns (`_RUN_READ`), then a
    step's; None if there are none."""
    if not found:
        return None
    split = len(_RUN_READ)
    run = _held_fresh(db, run_id, _RUN_READ, found[0][:split])
    return run, [StepRow.of(_STEP_NAMES, row[split:]) for row in found]


def lock_run_and_steps(db: Db, run_id: str, number: int) -> tuple[RunRow, list[StepRow]] | None:
    """The run and its step `number` (the list's one step), both rows locked and read
    fresh, in one round trip; None if the run or the step is absent. A run not held
    before comes without the columns steps do not read (`STEP_UNREAD`).

    Postgres locks the rows in the order of the FROM list, the run's first, as every
    transaction that writes a step has. Locking the steps' rows as well is what keeps
    them fresh: a statement that waited for a lock returns the newest committed
    version of every row it locks, but the snapshot's version of any row it only reads.
    """
    found = db.execute(_LOCK_RUN_AND_STEP, {"run_id": run_id, "number": number}).all()
    return _run_and_steps(db, run_id, found)


def lock_run_and_round(db: Db, run_id: str, number: int) -> tuple[RunRow, list[StepRow]] | None:
    """The run and all its steps, in order, every row locked and read fresh in one round
    trip (as `lock_run_and_steps` reads one), but with a step's `output` only where model
    step `number` decides on it: from the model step before `number` on, and an invalid
    tool call's. Any other step's `output` is None, and so is its `usage` outside that
    round; None if the run is absent or has no steps. The outputs of a long run's earlier
    steps are most of what its steps hold (every answer, every tool's result), and the
    thread's messages repeat them; and every JSON value read is parsed, however small.
    """
    found = db.execute(_LOCK_RUN_AND_ROUND, {"run_id": run_id, "number": number}).all()
    return _run_and_steps(db, run_id, found)


def steps_of(db: Db, run_id: str, numbers: Sequence[int] | None = None) -> list[StepRow]:
    """The run's steps (or those with these numbers), in order, without locking them."""
    if numbers is None:
        rows = db.execute(_ALL_STEPS, {"run_id": run_id})
    else:
        rows = db.execute(_SOME_STEPS, {"run_id": run_id, "numbers": list(numbers)})
    return [StepRow.of(_STEP_NAMES, row) for row in rows]


def row_of(run: Run) -> RunRow:
    """The row of a `Run` this transaction inserted, to hold."""
    return RunRow.of(_RUN_NAMES, [getattr(run, name) for name in _RUN_NAMES])
