"""Live notification of events: Redis pub/sub, or an in-process stand-in.

Publishing never raises: the database is the record, pub/sub only the
notification, so a follower that misses a message fills the hole from Postgres.

Listening costs one Redis connection per process, however many runs and
followers it serves: `RedisFanout` keeps a single pub/sub connection, owned by
one thread (the hub), which subscribes to a run's channel while anyone in the
process follows that run and hands each message to every follower's inbox. An
inbox is bounded and never blocks the hub: a follower that falls behind loses
live messages, is told so (`LOST`), and reads the stored ones from the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import queue
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import redis

from storage.keys import CHANNEL_PREFIX, run_channel

log = logging.getLogger(__name__)

Message = dict[str, Any]

# Handed to a follower instead of a message when live messages may have been
# missed: its inbox overflowed, or the subscription broke and was made again.
LOST: Final[Message] = {"type": "stepwise.lost"}

INBOX_LIMIT = 10_000  # live messages held for one follower before it is told it lost some
SUBSCRIBE_WAIT = 5.0  # seconds to wait for Redis to confirm a subscription


class _Inbox(ABC):
    """One follower's live messages: bounded, filled by the hub without ever blocking it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._overflowed = False
        self.live = False  # subscribed and confirmed: nothing published since can be missed
        self.late = False  # the follower stopped waiting for the confirmation and went on

    @abstractmethod
    def deliver(self, message: Message) -> None:
        """Called from the hub's thread."""

    def _take_lost(self) -> bool:
        if self._overflowed:
            self._overflowed = False
            return True
        return False


class Subscription(_Inbox):
    """Messages for one run, read by one thread."""

    def __init__(self, limit: int = INBOX_LIMIT) -> None:
        super().__init__(limit)
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=limit)

    def deliver(self, message: Message) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._overflowed = True

    def get(self, timeout: float) -> Message | None:
        """The next message, `LOST`, or None when `timeout` seconds pass without one."""
        if self._take_lost():
            return LOST
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return LOST if self._take_lost() else None


class AsyncSubscription(_Inbox):
    """Messages for one run, read by one asyncio task.

    A follower that keeps up waits once per message. It waits on one future with one
    timer, which the next message resolves: `asyncio.wait_for(queue.get(), …)` made a
    task as well, and handed a message over in three turns of the loop, not one (13.7
    against 5.6 µs of CPU a message).
    """

    def __init__(self, limit: int = INBOX_LIMIT) -> None:
        super().__init__(limit)
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None  # the reader, while it waits

    def deliver(self, message: Message) -> None:
        # RuntimeError: the loop has closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._put, message)

    def _put(self, message: Message) -> None:
        if len(self._queue) >= self._limit:
            self._overflowed = True
            return
        self._queue.append(message)
        if self._waiter is not None:
            _wake(self._waiter)

    async def get(self, timeout: float) -> Message | None:
        """The next message, `LOST`, or None when `timeout` seconds pass without one."""
        if self._take_lost():
            return LOST
        if not self._queue and timeout > 0:
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._queue:
            return self._queue.popleft()
        return LOST if self._take_lost() else None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _put_each(inboxes: list[AsyncSubscription], message: Message) -> None:
    for inbox in inboxes:
        inbox._put(message)


def _hand_out(inboxes: Sequence[_Inbox], message: Message) -> None:
    """Deliver `message` to every inbox. The ones read on an event loop get it through one
    wake-up of their loop, however many followers it runs: a wake-up costs more than the
    delivery (17 against 3 µs of CPU an inbox, ten followers on one loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[AsyncSubscription]] = {}
    for inbox in inboxes:
        if isinstance(inbox, AsyncSubscription):
            by_loop.setdefault(inbox._loop, []).append(inbox)
        else:
            inbox.deliver(message)
    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            loop.call_soon_threadsafe(_put_each, group, message)


class Fanout(ABC):
    """What both fan-outs share: subscriptions as context managers over attach/detach."""

    # Whether messages published by every process arrive here. When not, a follower's
    # inbox is never `live`, and the follower reads the database often.
    sees_every_process = True

    @abstractmethod
    def publish(self, run_id: str, payload: Message) -> None:
        """Send `payload` to the run's listeners; log and swallow any failure."""

    def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        """Send each `(run id, payload)`, in order; log and swallow any failure."""
        for run_id, payload in messages:
            self.publish(run_id, payload)

    @abstractmethod
    def _attach(self, run_id: str, inbox: _Inbox) -> Future[None]:
        """Start delivering the run's messages to `inbox`; resolved once none can be missed."""

    @abstractmethod
    def _detach(self, run_id: str, inbox: _Inbox) -> None:
        """Stop delivering to `inbox`."""

    @contextmanager
    def subscribe(self, run_id: str, limit: int = INBOX_LIMIT) -> Iterator[Subscription]:
        """A subscription to the run's messages, confirmed (or known not to be) on entry."""
        inbox = Subscription(limit)
        ready = self._attach(run_id, inbox)
        try:
            try:
                ready.result(timeout=SUBSCRIBE_WAIT)
                inbox.live = self.sees_every_process
            except FutureTimeout:
                inbox.late = True
                log.warning("no live events for run %s yet: following from the database", run_id)
            yield inbox
        finally:
            self._detach(run_id, inbox)

    @asynccontextmanager
    async def asubscribe(
        self, run_id: str, limit: int = INBOX_LIMIT
    ) -> AsyncIterator[AsyncSubscription]:
        """`subscribe` for asyncio: the wait for Redis does not block the event loop."""
        inbox = AsyncSubscription(limit)
        ready = self._attach(run_id, inbox)
        try:
            try:
                await asyncio.wait_for(asyncio.wrap_future(ready), SUBSCRIBE_WAIT)
                inbox.live = self.sees_every_process
            except TimeoutError:
                inbox.late = True
                log.warning("no live events for run %s yet: following from the database", run_id)
            yield inbox
        finally:
            self._detach(run_id, inbox)


class LocalFanout(Fanout):
    """In-process fan-out for the embedded default.

    A run started by another process publishes where this one cannot hear, so
    its followers here read the database twice a second.
    """

    sees_every_process = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inboxes: dict[str, set[_Inbox]] = {}

    def publish(self, run_id: str, payload: Message) -> None:
        with self._lock:
            inboxes = list(self._inboxes.get(run_id, ()))
        _hand_out(inboxes, payload)

    def _attach(self, run_id: str, inbox: _Inbox) -> Future[None]:
        with self._lock:
            self._inboxes.setdefault(run_id, set()).add(inbox)
        ready: Future[None] = Future()
        ready.set_result(None)
        return ready

    def _detach(self, run_id: str, inbox: _Inbox) -> None:
        with self._lock:
            self._inboxes[run_id].discard(inbox)
            if not self._inboxes[run_id]:
                del self._inboxes[run_id]


class _Channel:
    """A channel the hub listens to for this process, and who in the process wants it."""

    def __init__(self) -> None:
        self.inboxes: set[_Inbox] = set()
        self.ready: Future[None] = Future()


class RedisFanout(Fanout):
    """Redis pub/sub on channel `stepwise:run:<run id>`, one listening connection per process."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = redis.Redis.from_url(url, health_check_interval=30)
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._hub: threading.Thread | None = None
        self._closed = threading.Event()
        # The hub blocks reading its connection; a message on this private channel wakes it.
        self._wake_channel = f"stepwise:hub:{uuid.uuid4()}"

    def publish(self, run_id: str, payload: Message) -> None:
        try:
            self._client.publish(run_channel(run_id), json.dumps(payload))
        except redis.RedisError as error:
            log.warning("could not publish event of run %s: %s", run_id, error)

    def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        """One round trip for all of them (a pipeline, not a transaction)."""
        if len(messages) < 2:
            super().publish_many(messages)
            return
        pipeline = self._client.pipeline(transaction=False)
        for run_id, payload in messages:
            pipeline.publish(run_channel(run_id), json.dumps(payload))
        try:
            pipeline.execute()
        except redis.RedisError as error:
            runs = sorted({run_id for run_id, _ in messages})
            log.warning("could not publish events of runs %s: %s", ", ".join(runs), error)

    @property
    def channels(self) -> int:
        """How many runs this process listens to now."""
        with self._lock:
            return len(self._channels)

    def _attach(self, run_id: str, inbox: _Inbox) -> Future[None]:
        name = run_channel(run_id)
        with self._lock:
            channel = self._channels.get(name)
            new = channel is None
            if channel is None:
                channel = self._channels[name] = _Channel()
                self._to_subscribe.add(name)
            channel.inboxes.add(inbox)
            if self._hub is None:
                self._hub = threading.Thread(target=self._run_hub, name="stepwise-hub", daemon=True)
                self._hub.start()
        if new:
            self._wake()
        return channel.ready

    def _detach(self, run_id: str, inbox: _Inbox) -> None:
        name = run_channel(run_id)
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                return
            channel.inboxes.discard(inbox)
            if not channel.inboxes:
                del self._channels[name]
                self._to_unsubscribe.add(name)  # sent on the hub's next turn, no hurry

    def close(self) -> None:
        """Stop the hub and close both connections."""
        self._closed.set()
        self._wake()
        if self._hub is not None:
            self._hub.join(timeout=5)
        self._client.close()

    def _wake(self) -> None:
        # On failure the hub is reconnecting; it subscribes what is pending when it is back.
        with contextlib.suppress(redis.RedisError):
            self._client.publish(self._wake_channel, "")

    def _run_hub(self) -> None:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        reconnecting = False
        try:
            while not self._closed.is_set():
                try:
                    self._send_pending(pubsub)
                    message = pubsub.get_message(timeout=1.0)
                except redis.RedisError as error:
                    if not reconnecting:
                        log.warning("event subscriptions lost (%s); reconnecting", error)
                    reconnecting = True
                    self._lost_everything()
                    self._closed.wait(0.5)
                    continue
                if message is not None:
                    reconnecting = False
                    try:
                        self._dispatch(message)
                    except Exception:  # one bad message must not stop every follower
                        log.exception("could not hand out a live event")
        finally:
            pubsub.close()

    def _send_pending(self, pubsub: redis.client.PubSub) -> None:
        with self._lock:
            subscribe, self._to_subscribe = self._to_subscribe, set()
            unsubscribe = {c for c in self._to_unsubscribe if c not in self._channels}
            self._to_unsubscribe = set()
        try:
            if not pubsub.subscribed:
                pubsub.subscribe(self._wake_channel)
            if unsubscribe:
                pubsub.unsubscribe(*unsubscribe)  # type: ignore[no-untyped-call]
            if subscribe:
                pubsub.subscribe(*subscribe)
        except redis.RedisError:
            with self._lock:  # try again once the connection is back
                self._to_subscribe |= {c for c in subscribe if c in self._channels}
                self._to_unsubscribe |= unsubscribe
            raise

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        name = message["channel"].decode()
        if not name.startswith(CHANNEL_PREFIX):
            return  # the wake channel
        if kind == "subscribe":
            self._confirmed(name)
        elif kind == "message":
            payload: Message = json.loads(message["data"])
            with self._lock:
                channel = self._channels.get(name)
                inboxes = list(channel.inboxes) if channel else []
            _hand_out(inboxes, payload)

    def _confirmed(self, name: str) -> None:
        """Redis confirmed a subscription: a new one is ready; a renewed one may have gaps."""
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                return
            first = not channel.ready.done()
            if first:
                channel.ready.set_result(None)
            inboxes = list(channel.inboxes)
        for inbox in inboxes:
            inbox.live = True
            if not first or inbox.late:
                inbox.deliver(LOST)

    def _lost_everything(self) -> None:
        """The connection broke: every follower reads the database until it is back."""
        with self._lock:
            inboxes = [i for c in self._channels.values() for i in c.inboxes]
        for inbox in inboxes:
            inbox.live = False
            inbox.deliver(LOST)
