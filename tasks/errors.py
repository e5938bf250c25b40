"""Every error Stepwise raises on purpose, classified by what the caller should do.

StepwiseError                     (providers.errors) the root
├── ProviderError                 a model call failed (providers.errors)
│   ├── Retryable                 retry later; carries the server's retry_after
│   └── Fatal                     give up; the run fails with the message
│       └── ContextLengthExceeded
├── UserError                     the caller passed something wrong; nothing was written
│   ├── UnknownAgent
│   ├── InvalidInput
│   ├── RunNotFound
│   └── NotYours                  the run or thread belongs to another owner
├── ConfigError                   fix your code: a misconfigured agent, tool or setting
├── StepFailed                    a step failed its run (recorded); its Celery task fails with it
└── WaitTimeout                   `wait()` gave up before the run ended (also a TimeoutError)
"""

from __future__ import annotations

from providers.errors import (
    ContextLengthExceeded,
    Fatal,
    ProviderError,
    Retryable,
    StepwiseError,
)

__all__ = [
    "ConfigError",
    "ContextLengthExceeded",
    "Fatal",
    "InvalidInput",
    "NotYours",
    "ProviderError",
    "Retryable",
    "RunNotFound",
    "StepFailed",
    "StepwiseError",
    "UnknownAgent",
    "UserError",
    "WaitTimeout",
]


class UserError(StepwiseError):
    """The caller passed something wrong; nothing was written."""


class UnknownAgent(UserError):
    """No agent is registered under that name."""


class InvalidInput(UserError):
    """The input, thread, idempotency key or metadata is not acceptable."""


class RunNotFound(UserError):
    """No run has that id."""


class NotYours(UserError):
    """The run or thread belongs to another owner."""


class ConfigError(StepwiseError):
    """An agent, a tool or a setting is misconfigured."""


class WaitTimeout(StepwiseError, TimeoutError):
    """The run did not end within the time `wait()` was given."""


class StepFailed(StepwiseError):
    """A step failed its run, which is recorded already; the step's Celery task fails with it."""
