"""Live notification of events: Redis pub/sub, or an in-process stand-in.

Publishing never raises: the database is the record, pub/sub only the
notification, so a follower that misses a message fills the hole from Postgres.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis

from storage.keys import run_channel

log = logging.getLogger(__name__)


class Subscription(Protocol):
    """Messages published for one run, as they arrive."""

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when `timeout` seconds pass without one."""
        ...


class Fanout(Protocol):
    """Publishes a run's events to whoever listens, and lets them listen."""

    def publish(self, run_id: str, payload: dict[str, Any]) -> None:
        """Send `payload` to the run's listeners; log and swallow any failure."""
        ...

    def subscribe(self, run_id: str) -> Any:
        """A context manager yielding a `Subscription`, subscribed before it yields."""
        ...


class LocalFanout:
    """In-process fan-out for the embedded default."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, set[queue.SimpleQueue[dict[str, Any]]]] = {}

    def publish(self, run_id: str, payload: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners.get(run_id, ()))
        for listener in listeners:
            listener.put(payload)

    @contextmanager
    def subscribe(self, run_id: str) -> Iterator[_LocalSubscription]:
        inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._lock:
            self._listeners.setdefault(run_id, set()).add(inbox)
        try:
            yield _LocalSubscription(inbox)
        finally:
            with self._lock:
                self._listeners[run_id].discard(inbox)
                if not self._listeners[run_id]:
                    del self._listeners[run_id]


class _LocalSubscription:
    def __init__(self, inbox: queue.SimpleQueue[dict[str, Any]]) -> None:
        self._inbox = inbox

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None


class RedisFanout:
    """Redis pub/sub on channel `stepwise:run:<run id>`."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, health_check_interval=30)

    def publish(self, run_id: str, payload: dict[str, Any]) -> None:
        try:
            self._client.publish(run_channel(run_id), json.dumps(payload))
        except redis.RedisError as error:
            log.warning("could not publish event of run %s: %s", run_id, error)

    @contextmanager
    def subscribe(self, run_id: str) -> Iterator[_RedisSubscription]:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(run_channel(run_id))
            # Wait for the server's confirmation: only then can nothing published be missed.
            confirmed = pubsub.get_message(timeout=10)
            if not confirmed or confirmed["type"] != "subscribe":
                raise redis.ConnectionError(f"no subscribe confirmation for run {run_id}")
            yield _RedisSubscription(pubsub)
        finally:
            pubsub.close()


class _RedisSubscription:
    def __init__(self, pubsub: redis.client.PubSub) -> None:
        self._pubsub = pubsub

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        except redis.RedisError as error:
            # Redis is away: say "nothing new", so the follower reads the database, which
            # holds every stored event. redis-py subscribes again when it reconnects.
            log.warning("event subscription lost (%s); following from the database", error)
            time.sleep(timeout)
            return None
        if message is None or message["type"] != "message":
            return None
        payload: dict[str, Any] = json.loads(message["data"])
        return payload
