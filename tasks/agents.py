"""Agents: named definitions of instructions, model, tools and limits, and their registry."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from providers.base import split_model
from providers.errors import Fatal
from tasks.errors import ConfigError, UnknownAgent
from tasks.tools import Tool

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class Agent:
    """An agent definition.

    `max_steps` bounds model calls; `deadline` is seconds from the run's start;
    `step_timeout` is the longest one step may run before another copy of it may
    take over (keep it below the broker's visibility timeout). The run fails when
    the model asks for an invalid tool call (malformed JSON, arguments that fail
    the schema, an unknown tool) `max_invalid_turns` turns in a row; before that,
    each error goes back to the model so it can correct itself.
    `on_unknown_outcome` says what happens to a tool call whose worker died while
    it ran (its effect may or may not have happened) when the tool is not
    idempotent: `"report"` tells the model, `"fail"` fails the run.
    """

    name: str
    instructions: str
    model: str
    tools: tuple[Tool, ...] = ()
    max_steps: int = 10
    deadline: float = 600.0
    step_timeout: float = 300.0
    max_invalid_turns: int = 3
    on_unknown_outcome: Literal["report", "fail"] = "report"
    model_settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"agent name {self.name!r}: letters, digits, '_', '.', '-' only")
        try:
            split_model(self.model)
        except Fatal as error:
            raise ConfigError(f"agent {self.name!r}: {error}") from None
        object.__setattr__(self, "tools", tuple(self.tools))
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ConfigError(f"agent {self.name!r}: two tools share a name in {names}")
        if self.max_steps < 1:
            raise ConfigError(f"agent {self.name!r}: max_steps must be at least 1")
        if self.on_unknown_outcome not in ("report", "fail"):
            raise ConfigError(f"agent {self.name!r}: on_unknown_outcome is 'report' or 'fail'")
        if self.max_invalid_turns < 1:
            raise ConfigError(f"agent {self.name!r}: max_invalid_turns must be at least 1")
        if self.deadline <= 0 or self.step_timeout <= 0:
            raise ConfigError(f"agent {self.name!r}: deadline and step_timeout must be positive")
        object.__setattr__(self, "model_settings", MappingProxyType(dict(self.model_settings)))

    def tool(self, name: str) -> Tool | None:
        """The tool called `name`, if the agent has it."""
        return next((t for t in self.tools if t.name == name), None)


class Agents:
    """The agents a process knows: the built-in ones and those of `STEPWISE_AGENTS`."""

    def __init__(self, agents: Iterable[Agent]) -> None:
        self._by_name: dict[str, Agent] = {}
        for agent in agents:
            self._by_name[agent.name] = agent

    @classmethod
    def load(cls, modules: Iterable[str], builtin: Iterable[Agent]) -> Agents:
        """Built-in agents, then every module-level `Agent` in each named module."""
        found = list(builtin)
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as error:
                raise ConfigError(
                    f"STEPWISE_AGENTS: cannot import {module_name!r}: {error}"
                ) from error
            found.extend(v for v in vars(module).values() if isinstance(v, Agent))
        return cls(found)

    def get(self, name: str) -> Agent:
        """The agent called `name`; `UnknownAgent` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise UnknownAgent(f"unknown agent {name!r}; known agents: {known}") from None

    def __iter__(self) -> Any:
        return iter(sorted(self._by_name.values(), key=lambda a: a.name))
