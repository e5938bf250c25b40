"""The provider interface and how a model string picks a provider."""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from providers.errors import Fatal
from providers.types import ModelRequest, ModelResponse, OnDelta

# Connections an SDK client (one per process, base URL and key) may hold open, and keep
# open between calls: the SDKs' own limit is 1,000, but they keep only 100 between calls.
# A worker with more calls in flight than that (`-P threads -c 250`, gevent) closed the
# rest after each call and opened them again: a TCP and TLS handshake per call. An idle
# connection still closes after the SDKs' 5 seconds.
MAX_CONNECTIONS = 1000
KEEPALIVE_EXPIRY = 5.0


# A connection pool (httpcore's) walks all of its connections, under one lock, when a
# request starts and again when its response ends. A worker's calls shared one pool: with
# 250 calls in flight that walk cost about 0.4 ms of CPU a call, with 1,000 about 2 ms,
# half of the call (session 19). An SDK client's connections are therefore spread over
# this many pools, each thread (or greenlet) sending on one of them.
POOL_SHARDS = 16


def connection_limits(http: Any) -> Any:
    """The `Limits` above, of `http` (the SDK's HTTP library: httpx or httpx2)."""
    return http.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )


def http_options(http: Any) -> dict[str, Any]:
    """Keyword arguments for an SDK's `DefaultHttpxClient`: the limits above, each of
    `POOL_SHARDS` pools holding them (`sharded_transport`)."""
    return {"limits": connection_limits(http), "transport": sharded_transport(http)}


def sharded_transport(http: Any) -> Any:
    """An HTTP transport of `http` whose connections are in `POOL_SHARDS` pools, each an
    `http.HTTPTransport` as the SDK's client would make (with the limits above), made on
    first use. A thread keeps to one pool, so its calls reuse their connections."""
    return _sharded(http)()


@functools.cache
def _sharded(http: Any) -> Any:
    class ShardedTransport(http.BaseTransport):  # type: ignore[misc]
        def __init__(self) -> None:
            self._ssl = http.create_ssl_context()  # one for every pool: it loads the CAs
            self._lock = threading.Lock()
            self._pools: dict[int, Any] = {}
            self._thread = threading.local()
            self._turn = itertools.count()

        @property
        def pools(self) -> int:
            """How many pools have been made so far."""
            return len(self._pools)

        def _pool(self) -> Any:
            shard = getattr(self._thread, "shard", None)
            if shard is None:
                shard = self._thread.shard = next(self._turn) % POOL_SHARDS
            pool = self._pools.get(shard)
            if pool is None:
                with self._lock:
                    pool = self._pools.get(shard)
                    if pool is None:
                        limits = connection_limits(http)
                        pool = http.HTTPTransport(verify=self._ssl, limits=limits)
                        self._pools[shard] = pool
            return pool

        def handle_request(self, request: Any) -> Any:
            return self._pool().handle_request(request)

        def close(self) -> None:
            with self._lock:
                pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                pool.close()

    return ShardedTransport


class Provider(Protocol):
    """One model API. Implementations are thread-safe and hold their SDK client."""

    name: str

    def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """Run one model call; stream fragments to `on_delta` when given."""
        ...


C = TypeVar("C")


class Clients(Generic[C]):
    """One provider's SDK clients: one per (base URL, API key), shared across threads.

    The key is read from the environment variable the agent names in
    `model_settings["api_key_env"]` (the SDK's own by default), never stored.
    """

    def __init__(
        self,
        provider: str,
        key_env: str,
        base_url_env: str,
        make: Callable[[str | None, str], C],
        default_base_url: str | None = None,
    ) -> None:
        self._provider, self._key_env, self._base_url_env = provider, key_env, base_url_env
        self._make, self._default_base_url = make, default_base_url
        self._lock = threading.Lock()
        self._made: dict[tuple[str | None, str], C] = {}

    def get(self, settings: Mapping[str, Any]) -> C:
        """The client for these model settings, created on first use."""
        base_url = (
            settings.get("base_url") or os.environ.get(self._base_url_env) or self._default_base_url
        )
        key_env = settings.get("api_key_env") or self._key_env
        api_key = os.environ.get(key_env)
        if not api_key:
            raise Fatal(
                f"{self._provider}: no API key: set the {key_env} environment variable",
                self._provider,
            )
        with self._lock:
            if (base_url, api_key) not in self._made:
                self._made[(base_url, api_key)] = self._make(base_url, api_key)
            return self._made[(base_url, api_key)]


def split_model(model: str) -> tuple[str, str]:
    """`"openai:gpt-4.1-mini"` -> `("openai", "gpt-4.1-mini")`; a clear error otherwise."""
    provider, sep, name = model.partition(":")
    if not sep or not provider or not name:
        raise Fatal(f"model {model!r} must look like 'provider:model', e.g. 'scripted:demo'")
    return provider, name


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """`(event, data)` of each server-sent event in a streamed body's lines.

    As the SSE format says: an event ends at a blank line; its `data:` lines are
    joined by newlines; `event:` names it ("" if not); comments (`:`) and other
    fields are skipped; one space after a field's colon is not part of its value.
    An event with no data is skipped, and so is one the body ends in the middle of.
    """
    event, data = "", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
