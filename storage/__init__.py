"""Postgres (or SQLite) state through SQLModel, the event log and its Redis fan-out."""

from storage.db import SchemaOutOfDate, check_schema, make_engine, upgrade
from storage.fanout import Fanout, LocalFanout, RedisFanout
from storage.models import TERMINAL, Event, Run, ScheduleTick, Step, Thread, ThreadMessage
from storage.store import Store, Tx, event_payload

__all__ = [
    "TERMINAL",
    "Event",
    "Fanout",
    "LocalFanout",
    "RedisFanout",
    "Run",
    "ScheduleTick",
    "SchemaOutOfDate",
    "Step",
    "Store",
    "Thread",
    "ThreadMessage",
    "Tx",
    "check_schema",
    "event_payload",
    "make_engine",
    "upgrade",
]
