"""Which provider serves a model string, created once per process."""

from __future__ import annotations

import importlib
import importlib.util
import threading

from providers.base import Provider, split_model
from providers.errors import Fatal

# Prefix -> "module:Class". Each provider module imports its SDK, so it loads on first use.
_PROVIDERS = {
    "scripted": "providers.scripted:ScriptedProvider",
    "openai": "providers.openai:OpenAIProvider",
    "anthropic": "providers.anthropic:AnthropicProvider",
    "openai-responses": "providers.openai_responses:OpenAIResponsesProvider",
    "litellm": "providers.litellm:LiteLLMProvider",
}


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


# Optional extras: the adapter module always ships, the package it bridges may not.
_EXTRAS = {"litellm": "litellm"}


def known() -> tuple[str, ...]:
    """Provider prefixes this installation can serve."""
    return tuple(
        name
        for name, target in _PROVIDERS.items()
        if _importable(target) and _importable(_EXTRAS.get(name, target))
    )


def _importable(target: str) -> bool:
    module = target.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _make(name: str) -> Provider:
    target = _PROVIDERS.get(name)
    if target is None or not _importable(target):
        raise Fatal(
            f"unknown provider {name!r}; this installation knows: {', '.join(known())}", name
        )
    module, _, cls = target.partition(":")
    provider: Provider = getattr(importlib.import_module(module), cls)()
    return provider
