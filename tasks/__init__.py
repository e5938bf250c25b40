"""Stepwise: LLM agents as durable, distributed Celery work.

`celery -A tasks worker` finds the Celery app here.
"""

from tasks.agents import Agent
from tasks.app import app
from tasks.client import (
    RunInfo,
    StepInfo,
    afollow,
    cancel,
    follow,
    get_run,
    get_steps,
    start_run,
    wait,
)
from tasks.errors import (
    ConfigError,
    InvalidInput,
    NotYours,
    RunNotFound,
    StepwiseError,
    UnknownAgent,
    UserError,
    WaitTimeout,
)
from tasks.tools import Tool, ToolContext, tool

__all__ = [
    "Agent",
    "ConfigError",
    "InvalidInput",
    "NotYours",
    "RunInfo",
    "RunNotFound",
    "StepInfo",
    "StepwiseError",
    "Tool",
    "ToolContext",
    "UnknownAgent",
    "UserError",
    "WaitTimeout",
    "afollow",
    "app",
    "cancel",
    "follow",
    "get_run",
    "get_steps",
    "start_run",
    "tool",
    "wait",
]
