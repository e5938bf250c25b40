"""The error tree's root and its provider branch.

    StepwiseError                  root of everything Stepwise raises
    ├── ProviderError              a model call failed
    │   ├── Retryable              try again later (429, 5xx, timeouts); carries retry_after
    │   └── Fatal                  give up (bad request, auth, unknown model)
    │       └── ContextLengthExceeded
    └── (tasks.errors)             UserError, ConfigError, RunNotFound … see there

Constructors take plain values only, so every error survives Celery's JSON
serialisation of task failures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime


class StepwiseError(Exception):
    """Root of every error Stepwise raises on purpose."""


class ProviderError(StepwiseError):
    """A model call failed; `provider` and `model` name where."""

    def __init__(self, message: str, provider: str = "", model: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.message, self.provider, self.model))


class Retryable(ProviderError):
    """Transient failure: the step should be retried, after `retry_after` seconds if set."""

    def __init__(
        self, message: str, provider: str = "", model: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider, model)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type, tuple[str, str, str, float | None]]:  # type: ignore[override]
        return (type(self), (self.message, self.provider, self.model, self.retry_after))


class Fatal(ProviderError):
    """Permanent failure: retrying the same request cannot succeed."""


class ContextLengthExceeded(Fatal):
    """The conversation no longer fits the model's context window."""


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `retry-after` in seconds or as an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(lowered[name]) * scale
        except (KeyError, ValueError):
            continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    if "retry-after" not in lowered:
        return None
    try:
        when = parsedate_to_datetime(lowered["retry-after"]).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
