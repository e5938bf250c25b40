"""The Python client: start runs, read them, wait for them, follow them, cancel them."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from providers.types import Usage, usage_from_json
from storage import TERMINAL, Run, Step
from storage import follow as protocol
from storage.models import aware
from tasks import runs
from tasks.app import start_run as start_run_task
from tasks.errors import RunNotFound, WaitTimeout
from tasks.runtime import Runtime, current_runtime


@dataclass(frozen=True)
class RunInfo:
    """A run as a caller sees it."""

    id: str
    agent: str
    status: str
    input: str
    result: str | None
    error: str | None
    thread: str
    metadata: dict[str, Any]
    owner: str | None  # None: started without one, visible to every caller of the HTTP API
    usage: Usage
    cost_usd: float | None  # the priced model steps' sum; None when none had a price
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> bool:
        """True once the run's status can no longer change."""
        return self.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        """The run as JSON data."""
        data = asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            data[key] = aware(data[key]).isoformat() if data[key] else None
        return data


@dataclass(frozen=True)
class StepInfo:
    """One step of a run as a caller sees it."""

    number: int
    kind: str
    status: str
    tool_name: str | None
    arguments: str | None
    output: dict[str, Any] | None
    usage: Usage | None
    cost_usd: float | None
    error: str | None
    attempts: int
    queue: str | None
    started_at: datetime | None
    finished_at: datetime | None


def start_run(
    agent: str,
    input: str,
    *,
    thread: str | None = None,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
    run_id: str | None = None,
    owner: str | None = None,
) -> str:
    """Record a run and enqueue it; returns its id at once.

    The same `idempotency_key` (or `run_id`) twice returns the first run's id and
    starts nothing new (`NotYours` if that run has another `owner`). A run with
    an owner is shown by the HTTP API to that owner only; its thread, too, can
    be continued by that owner only. In the embedded default the run executes in a thread of
    this process, which stays alive until the run ends.
    """
    rt = current_runtime()
    recorded, created = runs.accept(
        rt,
        agent=agent,
        input=input,
        run_id=run_id,
        thread=thread,
        idempotency_key=idempotency_key,
        metadata=metadata,
        owner=owner,
    )
    if created:
        enqueue(rt, recorded)
    return recorded


def enqueue(rt: Runtime, run_id: str) -> None:
    """Send a recorded run's first task (embedded: run it in a thread of this process)."""
    if rt.settings.embedded:
        worker = threading.Thread(
            target=start_run_task.apply, kwargs={"kwargs": {"run_id": run_id}}, name=f"run-{run_id}"
        )
        worker.start()
        return
    try:
        start_run_task.apply_async(kwargs={"run_id": run_id})
    except Exception as error:
        with rt.store.transaction() as tx:
            run = runs.locked_run(tx.db, run_id)
            runs.finish(tx, run, "failed", reason=f"could not enqueue the run: {error}")
        raise


def get_run(run_id: str) -> RunInfo:
    """The run's current state; `RunNotFound` if there is no such run."""
    with current_runtime().store.reading() as db:
        run = db.get(Run, run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return _info(run)


def get_steps(run_id: str) -> list[StepInfo]:
    """The run's steps, in order."""
    get_run(run_id)
    with current_runtime().store.reading() as db:
        rows = db.exec(select(Step).where(Step.run_id == run_id).order_by(col(Step.number)))
        return [
            StepInfo(
                s.number,
                s.kind,
                s.status,
                s.tool_name,
                s.arguments,
                s.output,
                usage_from_json(s.usage) if s.usage is not None else None,
                s.cost_usd,
                s.error,
                s.attempts,
                s.queue,
                s.started_at,
                s.finished_at,
            )
            for s in rows
        ]


def _info(run: Run) -> RunInfo:
    return RunInfo(
        id=run.id,
        agent=run.agent,
        status=run.status,
        input=run.input,
        result=run.result,
        error=run.error,
        thread=run.thread_id,
        metadata=run.meta,
        owner=run.owner,
        usage=usage_from_json(run.usage),
        cost_usd=run.cost_usd,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def follow(
    run_id: str, after: int = 0, *, timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """The run's events with `seq > after`: replayed from the database, then live.

    Each stored event comes exactly once and in order, whatever happens to the
    live connection; live-only `model.delta` events (with `seq` None) come
    between the `model.started` and the `model.completed` (or `model.retracted`)
    of their step. The iterator ends after the terminal event, or raises
    `WaitTimeout` after `timeout` seconds. To resume after a disconnect, follow
    again with `after` set to the last `seq` received.
    """
    rt = current_runtime()
    get_run(run_id)
    try:
        yield from protocol.follow(rt.store, run_id, after, timeout=timeout)
    except protocol.FollowTimeout as error:
        raise WaitTimeout(str(error)) from None


async def afollow(
    run_id: str, after: int = 0, *, timeout: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """`follow` for asyncio: `async for event in afollow(run_id): ...`.

    Every follower in the process shares one Redis connection; database reads
    run in worker threads, so the event loop never blocks on them.
    """
    rt = current_runtime()
    await asyncio.to_thread(get_run, run_id)
    try:
        async for event in protocol.afollow(rt.store, run_id, after, timeout=timeout):
            yield event
    except protocol.FollowTimeout as error:
        raise WaitTimeout(str(error)) from None


def wait(run_id: str, timeout: float | None = None) -> RunInfo:
    """Block until the run ends and return it; `WaitTimeout` after `timeout` seconds."""
    rt = current_runtime()
    with rt.store.reading() as db:
        run = db.get(Run, run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        seen = run.last_seq
    deque(follow(run_id, after=seen, timeout=timeout), maxlen=0)  # read to the terminal event
    return get_run(run_id)


def cancel(run_id: str) -> RunInfo:
    """Cancel the run: at once when queued, at its next step boundary when running."""
    with current_runtime().store.transaction() as tx:
        runs.cancel(tx, run_id)
    return get_run(run_id)
