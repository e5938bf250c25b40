"""From committed events to what metrics and traces record: finished steps and runs.

The store tells `Observer` of each event after its commit (`storage.store.OBSERVERS`).
A step's start and end are committed by the same task in the same process, so
pairing them here needs no database. The run's agent and start are read once per
run and process, and kept for a while.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import col, select

from storage.events import (
    MODEL_COMPLETED,
    MODEL_RETRYING,
    MODEL_STARTED,
    RUN_STARTED,
    TERMINAL_EVENTS,
    TOOL_COMPLETED,
    TOOL_FAILED,
    TOOL_STARTED,
)
from storage.models import Event, Run, aware
from storage.store import Store

log = logging.getLogger(__name__)

STARTS = {MODEL_STARTED: "model", TOOL_STARTED: "tool"}
ENDS = {MODEL_COMPLETED, MODEL_RETRYING, TOOL_COMPLETED, TOOL_FAILED}
#: Open steps and runs remembered per process: a bound, not a working set.
REMEMBER = 4096


@dataclass(frozen=True)
class RunFacts:
    """What a run's spans and metrics need that its terminal event does not say."""

    agent: str
    model: str | None
    started: datetime | None


@dataclass(frozen=True)
class StepDone:
    """One attempt of a step, from its start event to the event that ended it."""

    run_id: str
    step: int
    kind: str  # "model" or "tool"
    started: datetime
    ended: datetime
    start: dict[str, Any]  # the start event's data
    end_type: str  # model.completed, model.retrying, tool.completed, tool.failed, run.*
    end: dict[str, Any]  # the ending event's data

    @property
    def outcome(self) -> str:
        """`succeeded`, `retried` or `failed`."""
        if self.end_type in (MODEL_COMPLETED, TOOL_COMPLETED):
            return "succeeded"
        return "retried" if self.end_type == MODEL_RETRYING else "failed"


class Sink(Protocol):
    """Where finished steps and runs go: the metrics, the traces."""

    def run_started(self, payload: dict[str, Any]) -> None:
        """A run started (its `run.started` event)."""

    def step_started(self, payload: dict[str, Any]) -> None:
        """A step attempt started (`model.started`, `tool.started`)."""

    def step_done(self, done: StepDone, facts: Callable[[], RunFacts | None]) -> None:
        """A step attempt ended; `facts()` reads the run's facts when needed."""

    def run_done(self, payload: dict[str, Any], facts: RunFacts | None) -> None:
        """A run ended (its terminal event)."""


def at(payload: dict[str, Any]) -> datetime:
    """When an event was recorded."""
    return datetime.fromisoformat(payload["at"])


class Observer:
    """Pairs step events, looks up run facts, and hands both to the sinks."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = tuple(sinks)
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._facts: OrderedDict[str, RunFacts] = OrderedDict()

    def __call__(self, store: Store, payload: dict[str, Any]) -> None:
        kind, run_id, step = payload["type"], payload["run_id"], payload.get("step")
        if kind in STARTS and step is not None:
            self._remember(self._open, (run_id, step), payload)
            for sink in self.sinks:
                sink.step_started(payload)
        elif kind in ENDS and step is not None:
            opened = self._forget(self._open, (run_id, step))
            if opened is not None:
                self._step_done(store, opened, payload)
        elif kind == RUN_STARTED:
            data = payload["data"]
            started = RunFacts(str(data.get("agent") or ""), data.get("model"), at(payload))
            self._remember(self._facts, run_id, started)
            for sink in self.sinks:
                sink.run_started(payload)
        elif kind in TERMINAL_EVENTS:
            for opened in self._open_steps(run_id):  # e.g. a model call that failed for good
                self._step_done(store, opened, payload)
            facts: RunFacts | None = self._forget(self._facts, run_id) or self._read(store, run_id)
            for sink in self.sinks:
                sink.run_done(payload, facts)

    def facts(self, store: Store, run_id: str) -> RunFacts | None:
        """The run's facts, from memory or else from the database."""
        with self._lock:
            known: RunFacts | None = self._facts.get(run_id)
        if known is None:
            known = self._read(store, run_id)
            if known is not None:
                self._remember(self._facts, run_id, known)
        return known

    def _step_done(self, store: Store, opened: dict[str, Any], payload: dict[str, Any]) -> None:
        done = StepDone(
            run_id=opened["run_id"],
            step=opened["step"],
            kind=STARTS[opened["type"]],
            started=at(opened),
            ended=at(payload),
            start=opened["data"],
            end_type=payload["type"],
            end=payload["data"],
        )
        for sink in self.sinks:
            sink.step_done(done, lambda: self.facts(store, done.run_id))

    def _open_steps(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            keys = [key for key in self._open if key[0] == run_id]
            return [self._open.pop(key) for key in keys]

    def _remember(self, where: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            where[key] = value
            where.move_to_end(key)
            while len(where) > REMEMBER:
                where.popitem(last=False)

    def _forget(self, where: OrderedDict[Any, Any], key: Any) -> Any:
        with self._lock:
            return where.pop(key, None)

    @staticmethod
    def _read(store: Store, run_id: str) -> RunFacts | None:
        try:
            with store.reading() as db:
                run = db.get(Run, run_id)
                if run is None:
                    return None
                started = db.exec(
                    select(Event)
                    .where(Event.run_id == run_id, Event.type == RUN_STARTED)
                    .order_by(col(Event.seq))
                ).first()
        except Exception:
            log.warning("could not read the facts of run %s", run_id, exc_info=True)
            return None
        model = started.data.get("model") if started is not None else None
        moment = run.started_at or run.created_at
        return RunFacts(run.agent, model, aware(moment) if moment else None)
