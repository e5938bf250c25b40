"""How long each step may run, and the rule that keeps Redis from redelivering a live one.

Redis hands a message nobody acknowledged within the visibility timeout to another
worker, under the same task id, and a step lets its own task id take it over. So
the visibility timeout must outlast the longest any step can run (its lease) and
the longest retry countdown (Celery holds a retried task unacknowledged until its
time comes). `problems` names every agent and tool that breaks the rule; a worker
refuses to start while there are any.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.agents import Agent
from tasks.tools import Tool

# A claimed tool step's lease outlasts the tool's own timeout by up to this much (by
# the timeout itself for a shorter one), so no other copy takes the step over while
# the first is still recording its result.
LEASE_MARGIN = 30.0
# The longest a model step waits before a retry, whatever a server's Retry-After says.
MAX_COUNTDOWN = 300.0
# Backoff between retries grows to at most this.
MAX_BACKOFF = 60.0


def tool_timeout(tool: Tool | None, agent: Agent | None) -> float:
    """Seconds one call of `tool` may take: its own timeout, else the agent's step timeout."""
    if tool is not None and tool.timeout:
        return tool.timeout
    return agent.step_timeout if agent is not None else Agent.step_timeout


def tool_lease(tool: Tool | None, agent: Agent | None) -> float:
    """How long a claimed tool step is held before another copy may take it."""
    timeout = tool_timeout(tool, agent)
    return timeout + min(LEASE_MARGIN, timeout)


def problems(agents: Iterable[Agent], visibility_timeout: float) -> list[str]:
    """Every setting that lets a step still running be redelivered; empty when all is well."""
    found = []
    if visibility_timeout <= MAX_COUNTDOWN:
        found.append(
            f"the longest retry countdown ({MAX_COUNTDOWN:g} s) is not below the visibility "
            f"timeout ({visibility_timeout:g} s)"
        )
    for agent in agents:
        if agent.step_timeout >= visibility_timeout:
            found.append(
                f"agent {agent.name!r}: step_timeout {agent.step_timeout:g} s is not below "
                f"the visibility timeout ({visibility_timeout:g} s)"
            )
        for tool in agent.tools:
            lease = tool_lease(tool, agent)
            if lease >= visibility_timeout:
                timeout = tool_timeout(tool, agent)
                found.append(
                    f"agent {agent.name!r}, tool {tool.name!r}: its timeout {timeout:g} s "
                    f"plus {lease - timeout:g} s to record the result is not below the "
                    f"visibility timeout ({visibility_timeout:g} s)"
                )
    return found
