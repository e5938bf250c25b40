"""The provider interface and how a model string picks a provider."""

from __future__ import annotations

from typing import Protocol

from providers.errors import Fatal
from providers.types import ModelRequest, ModelResponse, OnDelta


class Provider(Protocol):
    """One model API. Implementations are thread-safe and hold their SDK client."""

    name: str

    def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """Run one model call; stream fragments to `on_delta` when given."""
        ...


def split_model(model: str) -> tuple[str, str]:
    """`"openai:gpt-4.1-mini"` -> `("openai", "gpt-4.1-mini")`; a clear error otherwise."""
    provider, sep, name = model.partition(":")
    if not sep or not provider or not name:
        raise Fatal(f"model {model!r} must look like 'provider:model', e.g. 'scripted:demo'")
    return provider, name
