"""Kombu's Redis transport, with one Redis client per channel instead of one per command.

Kombu builds a new `redis.Redis` for every command it sends (`Channel.conn_or_acquire`):
each publish, each acknowledgement, each batch of task events. Building one copies
redis-py's table of 169 response callbacks, about 60 µs of CPU, and every task sends
several such commands. A client is safe to share between threads (it takes a connection
from the pool per command), so this channel keeps one for as long as its pool lives.
`celeryconfig` selects it for `redis://` and `rediss://` brokers; messages and keys
are exactly kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):  # type: ignore[misc]
    """A Redis channel that reuses its synchronous client."""

    _client_of_pool: tuple[Any, Any] | None = None  # (the pool, the client made on it)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own connections: kombu caches those already
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool  # a new one after a fork or a lost connection: a new client then
        made = self._client_of_pool
        if made is None or made[0] is not pool:
            client = super()._create_client()  # type: ignore[no-untyped-call]
            made = self._client_of_pool = (pool, client)
        return made[1]


class Transport(redis.Transport):  # type: ignore[misc]
    """The Redis transport, with `Channel` above."""

    Channel = Channel
