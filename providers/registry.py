"""Which provider serves a model string, created once per process."""

from __future__ import annotations

import threading

from providers.base import Provider, split_model
from providers.errors import Fatal
from providers.scripted import ScriptedProvider


class Providers:
    """Provider instances for one worker process; build a new one after fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, Provider] = {}

    def for_model(self, model: str) -> Provider:
        """The provider for `model` (`"provider:name"`), created on first use."""
        name, _ = split_model(model)
        with self._lock:
            if name not in self._made:
                self._made[name] = _make(name)
            return self._made[name]


def known() -> tuple[str, ...]:
    """Provider prefixes this build can serve."""
    return ("scripted",)


def _make(name: str) -> Provider:
    if name == "scripted":
        return ScriptedProvider()
    raise Fatal(f"unknown provider {name!r}; this build knows: {', '.join(known())}", name)
