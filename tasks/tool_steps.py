"""The tool step: run one tool call the model asked for and record its result.

Before the tool runs, the claim commits the step as running with an effect id:
that is the effect record. A step found running again (its worker died, or its
lease ran out) may have had its effect: an idempotent tool runs again with the
same effect id; any other call ends as `outcome_unknown` and is not run twice.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from providers.types import ToolResult
from storage import TERMINAL, Tx
from storage.events import TOOL_COMPLETED, TOOL_FAILED, TOOL_OUTCOME_UNKNOWN, TOOL_STARTED
from storage.rows import RunRow, StepRow
from tasks.agents import Agent
from tasks.errors import UnknownAgent
from tasks.records import Where, claim, end_step, locked_step, recorded, stopped
from tasks.runs import finish
from tasks.runtime import Runtime
from tasks.timing import tool_lease, tool_timeout
from tasks.tool_threads import THREADS
from tasks.tools import Tool, ToolArgumentsError, ToolContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one tool call came to, as recorded on its step."""

    result: ToolResult
    invalid: bool = False  # the model's call itself was bad: JSON, schema, unknown tool
    timed_out: bool = False


def tool_step(rt: Runtime, run_id: str, number: int, where: Where) -> None:
    """Run one tool call and record its result (an error result if the tool failed)."""
    with rt.store.transaction() as tx:
        run, step = locked_step(tx.db, run_id, number)
        if step.status not in ("pending", "running"):
            return
        if stopped(tx, run, step):
            return
        agent = _agent(rt, run.agent)
        tool = agent.tool(step.tool_name or "") if agent else None
        timeout = tool_timeout(tool, agent)
        earlier = step.status == "running"  # an attempt that never recorded its outcome
        effect_id = step.effect_id or str(uuid.uuid4())
        if not claim(tx, step, where, tool_lease(tool, agent), effect_id=effect_id):
            return  # another copy of this step is running it
        if earlier and not (tool and tool.idempotent):
            _outcome_unknown(tx, run, step, agent)
            return
        tx.emit(
            run_id,
            TOOL_STARTED,
            {
                "call_id": step.call_id,
                "name": step.tool_name,
                "arguments": step.arguments,
                "effect_id": effect_id,
                "attempt": step.attempts,
            },
            number,
        )
        context = ToolContext(run_id, number, step.call_id or "", effect_id, step.attempts)
        name, arguments = step.tool_name or "", step.arguments or ""

    outcome = _run_tool(agent, tool, name, arguments, context, timeout)
    recorded(lambda: _record(rt, context, name, outcome))


def tool_of(rt: Runtime, agent_name: str, name: str) -> Tool | None:
    """The agent's tool called `name`, if this worker knows both."""
    agent = _agent(rt, agent_name)
    return agent.tool(name) if agent else None


def _agent(rt: Runtime, name: str) -> Agent | None:
    try:
        return rt.agents.get(name)
    except UnknownAgent:
        return None


def _outcome_unknown(tx: Tx, run: RunRow, step: StepRow, agent: Agent | None) -> None:
    """End a call whose earlier attempt may have taken effect, without running it again."""
    content = (
        f"outcome unknown: the worker running {step.tool_name} stopped before it recorded "
        f"a result, so the call may or may not have taken effect (effect id {step.effect_id}); "
        "it was not run again"
    )
    output = {"content": content, "is_error": True, "invalid": False, "outcome_unknown": True}
    end_step(tx, step, "failed", error=content, output=output)
    data = {"call_id": step.call_id, "name": step.tool_name, "effect_id": step.effect_id}
    tx.emit(run.id, TOOL_OUTCOME_UNKNOWN, data, step.number)
    if agent is not None and agent.on_unknown_outcome == "fail":
        finish(tx, run, "failed", reason=f"tool step {step.number}: {content}")


def _run_tool(
    agent: Agent | None,
    tool: Tool | None,
    name: str,
    arguments: str,
    context: ToolContext,
    timeout: float,
) -> Outcome:
    """The tool's result, or an error result the model can read and act on."""
    call_id = context.call_id
    if agent is None:
        return Outcome(ToolResult(call_id, name, "this worker does not know the agent", True))
    if tool is None:
        available = ", ".join(t.name for t in agent.tools) or "none"
        message = f"unknown tool {name!r}; this agent's tools are: {available}"
        return Outcome(ToolResult(call_id, name, message, True), invalid=True)
    try:
        valid = tool.validate(arguments)
    except ToolArgumentsError as error:
        message = f"invalid call to {name}: {error}"
        return Outcome(ToolResult(call_id, name, message, True), invalid=True)
    try:
        content = _within(timeout, lambda: tool.invoke(valid, context), f"tool-{name}")
    except FutureTimeout:
        message = (
            f"{name} did not finish within {timeout:g} s and was abandoned; "
            "it may still finish, and its effects may still happen"
        )
        return Outcome(ToolResult(call_id, name, message, True), timed_out=True)
    except Exception as error:
        log.warning("tool %s of run %s raised", name, context.run_id, exc_info=True)
        return Outcome(ToolResult(call_id, name, f"{type(error).__name__}: {error}", True))
    return Outcome(ToolResult(call_id, name, content))


def _within(timeout: float, call: Any, thread_name: str) -> str:
    """`call()` in a thread of its own (`tasks.tool_threads`), waited for at most
    `timeout` seconds.

    Celery's `time_limit` does nothing under the threads and gevent pools, and a
    thread cannot be killed: past the timeout the call is abandoned, and whatever
    it returns later is dropped. Under gevent the thread is a greenlet, so a tool
    that never yields (a CPU loop) cannot be timed out.
    """
    future: Future[str] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        threading.current_thread().name = thread_name
        try:
            future.set_result(call())
        except BaseException as error:
            future.set_exception(error)

    # The tool sees the step's context variables: its log lines name the run and the step.
    context = contextvars.copy_context()
    THREADS.run(lambda: context.run(run))
    return future.result(timeout)


def _record(rt: Runtime, context: ToolContext, name: str, outcome: Outcome) -> None:
    result = outcome.result
    with rt.store.transaction() as tx:
        run, step = locked_step(tx.db, context.run_id, context.step)
        if step.status != "running" or step.attempts != context.attempt:
            return  # cancelled meanwhile, or another copy took the step over
        output: dict[str, Any] = {
            "content": result.content,
            "is_error": result.is_error,
            "invalid": outcome.invalid,
        }
        if outcome.timed_out:
            output["timed_out"] = True
        status, error = ("failed", result.content) if result.is_error else ("succeeded", None)
        end_step(tx, step, status, error=error, output=output)
        if run.status in TERMINAL:
            return  # recorded on the step; the terminal event stays the last in the log
        data: dict[str, Any] = {"call_id": context.call_id, "name": name}
        if result.is_error:
            data |= {"error": result.content, "invalid": outcome.invalid}
            tx.emit(context.run_id, TOOL_FAILED, data, context.step)
        else:
            tx.emit(
                context.run_id, TOOL_COMPLETED, {**data, "result": result.content}, context.step
            )
