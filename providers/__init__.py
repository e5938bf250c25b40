"""Thin, task-safe adapters from our message types to model APIs."""

from providers.base import Provider, split_model
from providers.errors import ContextLengthExceeded, Fatal, ProviderError, Retryable, StepwiseError
from providers.registry import Providers
from providers.scripted import STAND_IN_NOTICE, ScriptedProvider
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    ModelResponse,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)

__all__ = [
    "STAND_IN_NOTICE",
    "ContextLengthExceeded",
    "Delta",
    "Fatal",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "Provider",
    "ProviderError",
    "Providers",
    "Retryable",
    "ScriptedProvider",
    "StepwiseError",
    "TextPart",
    "Thinking",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "split_model",
]
