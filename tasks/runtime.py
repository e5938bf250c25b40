"""Everything a step needs, built once per process from the settings."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from providers import Providers
from providers.prices import Prices
from storage import LocalFanout, RedisFanout, Store, check_schema, make_engine, upgrade
from storage.fanout import Fanout
from tasks.agents import Agents
from tasks.demo import demo_agent
from tasks.errors import ConfigError
from tasks.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The store, the agents, the providers and the price table of one process."""

    settings: Settings
    store: Store
    agents: Agents
    providers: Providers
    prices: Prices


class _Runtimes:
    """This process's runtimes, one per distinct settings, built on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[Settings, Runtime] = {}

    def get(self, settings: Settings) -> Runtime:
        with self._lock:
            if settings not in self._built:
                self._built[settings] = _build(settings)
            return self._built[settings]

    def forget(self) -> None:
        """Drop every runtime without closing connections a parent process still uses."""
        with self._lock:
            for runtime in self._built.values():
                runtime.store.engine.dispose(close=False)
            self._built.clear()


_runtimes = _Runtimes()


def _build(settings: Settings) -> Runtime:
    """An embedded SQLite database is migrated on the spot; any other database must
    already be at the newest migration (`stepwise db upgrade`)."""
    try:
        prices = Prices.load(settings.prices_file)
    except ValueError as error:
        raise ConfigError(f"STEPWISE_PRICES: {error}") from None
    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        prepared_statements=settings.database_prepared_statements,
    )
    if engine.dialect.name == "sqlite":
        upgrade(engine)
    else:
        check_schema(engine)
    fanout: Fanout = RedisFanout(settings.redis_url) if settings.redis_url else LocalFanout()
    agents = Agents.load(settings.agents_modules, [demo_agent(settings)])
    return Runtime(settings, Store(engine, fanout), agents, Providers(), prices)


def runtime_for(settings: Settings) -> Runtime:
    """The runtime for `settings`."""
    return _runtimes.get(settings)


def current_runtime() -> Runtime:
    """The runtime for the current environment."""
    return _runtimes.get(Settings.from_env())


def forget_runtimes() -> None:
    """Forget every runtime; a forked worker child calls this before its first task."""
    _runtimes.forget()
