"""What each step does, as plain functions over the runtime: no Celery in here.

Every step follows the same shape: lock the run and claim the step in one short
transaction, do the slow part (the model call, the tool) with no transaction
open, then record the outcome and decide what follows in a second transaction.
A step returns `Next`, which the Celery shell turns into canvas. A redelivered
step finds its record and answers with the same `Next` without calling the
model or the tool again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, func, select

from providers.errors import Fatal
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    ModelResponse,
    ToolResult,
    message_from_json,
    message_to_json,
    usage_from_json,
    usage_to_json,
)
from storage import TERMINAL, Run, Step, ThreadMessage, Tx
from storage.events import (
    MODEL_COMPLETED,
    MODEL_DELTA,
    MODEL_RETRYING,
    MODEL_STARTED,
    RUN_STARTED,
    STEP_SKIPPED,
    TOOL_COMPLETED,
    TOOL_FAILED,
    TOOL_STARTED,
)
from storage.models import aware, utcnow
from tasks import loop
from tasks.agents import Agent
from tasks.errors import UnknownAgent
from tasks.runs import finish, locked_run
from tasks.runtime import Runtime
from tasks.tools import Tool, ToolArgumentsError, ToolContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Next:
    """What to schedule after a step: tool steps (with their queues), then a model step."""

    tools: tuple[tuple[int, str | None], ...] = ()
    model: int | None = None
    finish: bool = False


NOTHING = Next()


class NotReady(Exception):
    """The step cannot start yet; the task retries it shortly."""


@dataclass(frozen=True)
class Where:
    """The task execution a step runs in, kept on its record."""

    task_id: str | None = None
    queue: str | None = None


def start(rt: Runtime, run_id: str) -> Next:
    """Move a queued run to running and schedule its first model step."""
    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        if run.status in TERMINAL:
            return NOTHING
        if run.status != "queued":
            first = _step(tx.db, run_id, 1)
            return Next(model=1) if first.status == "pending" else NOTHING
        try:
            agent = rt.agents.get(run.agent)
        except UnknownAgent as error:
            finish(tx, run, "failed", reason=f"{error} (on this worker)")
            return NOTHING
        now = utcnow()
        run.status, run.started_at = "running", now
        run.deadline_at = now + timedelta(seconds=agent.deadline)
        tx.db.add(run)
        _append(tx.db, run, Message.text("user", run.input))
        tx.db.add(Step(run_id=run_id, number=1, kind="model"))
        tx.emit(
            run_id,
            RUN_STARTED,
            {"agent": agent.name, "model": agent.model, "deadline": run.deadline_at.isoformat()},
        )
    return Next(model=1)


def model_step(rt: Runtime, run_id: str, number: int, where: Where) -> Next:
    """Call the model once, record its response, and decide what follows."""
    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        step = _step(tx.db, run_id, number)
        if step.status == "succeeded":
            return _continuation(rt, tx.db, run, step)
        if _stopped(tx, run, step):
            return NOTHING
        try:
            agent = rt.agents.get(run.agent)
        except UnknownAgent as error:
            _end_step(tx, step, "failed", error=str(error))
            finish(tx, run, "failed", reason=f"{error} (on this worker)")
            return NOTHING
        if not _add_tool_results(tx.db, run, number):
            raise NotReady(f"run {run_id}: the tool round before step {number} is still running")
        if not _claim(step, where, agent.step_timeout):
            return NOTHING  # another copy of this step is running it
        tx.db.add(step)
        tx.emit(run_id, MODEL_STARTED, {"model": agent.model, "attempt": step.attempts}, number)
        request = ModelRequest(
            model=agent.model,
            instructions=agent.instructions,
            messages=_conversation(tx.db, run.thread_id),
            tools=tuple(t.spec() for t in agent.tools),
            settings=dict(agent.model_settings),
        )

    def on_delta(delta: Delta) -> None:
        data = {"kind": delta.kind, "text": delta.text, "index": delta.index}
        rt.store.publish_live(run_id, MODEL_DELTA, data, number)

    try:
        response = rt.providers.for_model(agent.model).complete(request, on_delta)
    except Fatal as error:
        with rt.store.transaction() as tx:
            run = locked_run(tx.db, run_id)
            step = _step(tx.db, run_id, number)
            _end_step(tx, step, "failed", error=str(error))
            finish(tx, run, "failed", reason=f"model step {number} failed: {error}")
        return NOTHING
    return _record_response(rt, run_id, number, agent, response)


def _record_response(
    rt: Runtime, run_id: str, number: int, agent: Agent, response: ModelResponse
) -> Next:
    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        step = _step(tx.db, run_id, number)
        if step.status == "succeeded":  # a duplicate delivery finished first
            return _continuation(rt, tx.db, run, step)
        step.output = {
            "message": message_to_json(response.message),
            "finish_reason": response.finish_reason,
            "model": response.model,
        }
        step.usage = usage_to_json(response.usage)
        _end_step(tx, step, "succeeded")
        _append(tx.db, run, response.message)
        run.usage = usage_to_json(usage_from_json(run.usage) + response.usage)
        tx.db.add(run)
        tx.emit(
            run_id,
            MODEL_COMPLETED,
            {
                "finish_reason": response.finish_reason,
                "text": response.message.joined_text,
                "tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments}
                    for c in response.message.tool_calls
                ],
                "usage": step.usage,
                "model": response.model,
            },
            number,
        )
        if _stopped(tx, run, None):
            return NOTHING
        model_calls = _count_model_calls(tx.db, run_id)
        decision = loop.decide(response, model_calls=model_calls, max_steps=agent.max_steps)
        if isinstance(decision, loop.Fail):
            finish(tx, run, "failed", reason=decision.reason)
            return NOTHING
        if isinstance(decision, loop.Finish):
            return Next(finish=True)
        if isinstance(decision, loop.Continue):
            tx.db.add(Step(run_id=run_id, number=number + 1, kind="model"))
            return Next(model=number + 1)
        plan = loop.plan_tools(number, len(decision.calls))
        queues = []
        for call, tool_number in zip(decision.calls, plan.tool_steps, strict=True):
            tx.db.add(
                Step(
                    run_id=run_id,
                    number=tool_number,
                    kind="tool",
                    call_id=call.id,
                    tool_name=call.name,
                    arguments=call.arguments,
                )
            )
            tool = agent.tool(call.name)
            queues.append((tool_number, tool.queue if tool else None))
        tx.db.add(Step(run_id=run_id, number=plan.next_model_step, kind="model"))
        return Next(tools=tuple(queues), model=plan.next_model_step)


def tool_step(rt: Runtime, run_id: str, number: int, where: Where) -> None:
    """Run one tool call and record its result (an error result if the tool failed)."""
    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        step = _step(tx.db, run_id, number)
        if step.status not in ("pending", "running"):
            return
        if _stopped(tx, run, step):
            return
        tool = _tool_of(rt, run.agent, step.tool_name or "")
        lease = tool.timeout if tool and tool.timeout else _agent_step_timeout(rt, run.agent)
        if not _claim(step, where, lease):
            return  # another copy of this step is running it
        tx.db.add(step)
        tx.emit(
            run_id,
            TOOL_STARTED,
            {"call_id": step.call_id, "name": step.tool_name, "arguments": step.arguments},
            number,
        )
        agent_name, call_id = run.agent, step.call_id or ""
        name, arguments = step.tool_name or "", step.arguments or ""

    context = ToolContext(run_id=run_id, step=number, call_id=call_id)
    result = _run_tool(rt, agent_name, name, arguments, context)

    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        step = _step(tx.db, run_id, number)
        if step.status != "running":
            return
        step.output = {"content": result.content, "is_error": result.is_error}
        _end_step(tx, step, "failed" if result.is_error else "succeeded", error=None)
        if result.is_error:
            step.error = result.content
        if run.status in TERMINAL:
            return  # recorded on the step; the terminal event stays the last in the log
        data: dict[str, Any] = {"call_id": call_id, "name": name}
        if result.is_error:
            tx.emit(run_id, TOOL_FAILED, {**data, "error": result.content}, number)
        else:
            tx.emit(run_id, TOOL_COMPLETED, {**data, "result": result.content}, number)


def _tool_of(rt: Runtime, agent_name: str, name: str) -> Tool | None:
    try:
        return rt.agents.get(agent_name).tool(name)
    except UnknownAgent:
        return None


def _agent_step_timeout(rt: Runtime, agent_name: str) -> float:
    try:
        return rt.agents.get(agent_name).step_timeout
    except UnknownAgent:
        return Agent.step_timeout


def _run_tool(
    rt: Runtime, agent_name: str, name: str, arguments: str, context: ToolContext
) -> ToolResult:
    """The tool's result, or an error result the model can read and act on."""
    try:
        agent = rt.agents.get(agent_name)
    except UnknownAgent as error:
        return ToolResult(context.call_id, name, f"{error} (on this worker)", is_error=True)
    tool = agent.tool(name)
    if tool is None:
        available = ", ".join(t.name for t in agent.tools) or "none"
        message = f"unknown tool {name!r}; this agent's tools are: {available}"
        return ToolResult(context.call_id, name, message, is_error=True)
    try:
        content = tool.invoke(tool.validate(arguments), context)
    except ToolArgumentsError as error:
        return ToolResult(context.call_id, name, f"invalid call to {name}: {error}", True)
    except Exception as error:
        log.warning("tool %s of run %s raised", name, context.run_id, exc_info=True)
        return ToolResult(context.call_id, name, f"{type(error).__name__}: {error}", True)
    return ToolResult(context.call_id, name, content)


def finish_run(rt: Runtime, run_id: str) -> None:
    """End a run whose model gave its final answer."""
    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        if run.status in TERMINAL or _stopped(tx, run, None):
            return
        last = tx.db.exec(
            select(Step)
            .where(Step.run_id == run_id, Step.kind == "model", Step.status == "succeeded")
            .order_by(col(Step.number).desc())
        ).first()
        answer = (
            message_from_json(last.output["message"]).joined_text if last and last.output else ""
        )
        finish(tx, run, "succeeded", result=answer)


def note_retry(
    rt: Runtime, run_id: str, number: int, error: Exception, countdown: float, attempt: int
) -> None:
    """Record that a model step will be retried, and when."""
    with rt.store.transaction() as tx:
        locked_run(tx.db, run_id)
        tx.emit(
            run_id,
            MODEL_RETRYING,
            {"error": str(error), "countdown": round(countdown, 3), "attempt": attempt},
            number,
        )


def fail_run(rt: Runtime, run_id: str, reason: str, number: int | None = None) -> None:
    """Fail a run (and its step) because a step cannot go on."""
    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        if number is not None:
            step = tx.db.exec(
                select(Step).where(Step.run_id == run_id, Step.number == number)
            ).first()
            if step is not None and step.status in ("pending", "running"):
                _end_step(tx, step, "failed", error=reason)
        finish(tx, run, "failed", reason=reason)


def _step(db: Session, run_id: str, number: int) -> Step:
    step = db.exec(select(Step).where(Step.run_id == run_id, Step.number == number)).first()
    if step is None:
        raise LookupError(f"run {run_id} has no step {number}")
    return step


def _claim(step: Step, where: Where, lease: float) -> bool:
    """Take the step for this task; False while another copy of it holds the lease.

    The same task id may always take it again: that is a retry, or a redelivery
    of the very message whose worker died. A different copy (a re-dispatch) waits
    until the holder's lease has run out.
    """
    now = utcnow()
    held = step.status == "running" and step.lease_until and aware(step.lease_until) > now
    if held and step.task_id != where.task_id:
        return False
    step.status = "running"
    step.attempts += 1
    step.started_at = now
    step.lease_until = now + timedelta(seconds=lease)
    step.task_id, step.queue = where.task_id, where.queue
    return True


def _end_step(tx: Tx, step: Step, status: str, error: str | None = None) -> None:
    step.status, step.error, step.finished_at = status, error, utcnow()
    step.lease_until = None
    tx.db.add(step)


def _stopped(tx: Tx, run: Run, step: Step | None) -> bool:
    """At a step boundary: end the run if it was cancelled or passed its deadline.

    True when the run has ended (now or before); the step, if any, is skipped.
    """
    status = run.status
    if status not in TERMINAL:
        stop = loop.boundary_stop(
            cancel_requested=run.cancel_requested,
            deadline=aware(run.deadline_at) if run.deadline_at else None,
            now=utcnow(),
        )
        if stop is None:
            return False
        status = stop
    if step is not None and step.status in ("pending", "running"):
        _end_step(tx, step, "cancelled")
        if run.status not in TERMINAL:
            # Only before the terminal event, which stays the last one in the log.
            tx.emit(run.id, STEP_SKIPPED, {"kind": step.kind, "status": status}, step.number)
    if run.status not in TERMINAL:
        reason = "cancelled on request" if status == "cancelled" else "passed its deadline"
        finish(tx, run, status, reason=reason)
    return True


def _continuation(rt: Runtime, db: Session, run: Run, step: Step) -> Next:
    """What a finished model step scheduled, for a redelivered copy of it.

    Re-dispatch only when nothing after the step has started: then the original
    dispatch may never have happened. Otherwise whoever started it carries on.
    """
    if run.status in TERMINAL or step.output is None:
        return NOTHING
    calls = message_from_json(step.output["message"]).tool_calls
    if not calls:
        if step.output.get("finish_reason") != "pause":
            return Next(finish=True)
        after = db.exec(
            select(Step).where(Step.run_id == run.id, Step.number == step.number + 1)
        ).first()
        return Next(model=step.number + 1) if after and after.status == "pending" else NOTHING
    plan = loop.plan_tools(step.number, len(calls))
    later = db.exec(
        select(Step).where(
            Step.run_id == run.id,
            col(Step.number).in_([*plan.tool_steps, plan.next_model_step]),
        )
    ).all()
    if any(s.status != "pending" for s in later):
        return NOTHING
    queues = []
    for call, number in zip(calls, plan.tool_steps, strict=True):
        tool = _tool_of(rt, run.agent, call.name)
        queues.append((number, tool.queue if tool else None))
    return Next(tools=tuple(queues), model=plan.next_model_step)


def _count_model_calls(db: Session, run_id: str) -> int:
    return db.exec(
        select(func.count())
        .select_from(Step)
        .where(Step.run_id == run_id, Step.kind == "model", Step.status == "succeeded")
    ).one()


def _conversation(db: Session, thread_id: str) -> tuple[Message, ...]:
    rows = db.exec(
        select(ThreadMessage)
        .where(ThreadMessage.thread_id == thread_id)
        .order_by(col(ThreadMessage.position))
    ).all()
    return tuple(message_from_json({"role": r.role, "parts": r.parts}) for r in rows)


def _append(db: Session, run: Run, message: Message) -> None:
    last = db.exec(
        select(func.max(ThreadMessage.position)).where(ThreadMessage.thread_id == run.thread_id)
    ).one()
    data = message_to_json(message)
    db.add(
        ThreadMessage(
            thread_id=run.thread_id,
            position=(last or 0) + 1,
            run_id=run.id,
            role=message.role,
            parts=data["parts"],
        )
    )
    db.flush()


def _add_tool_results(db: Session, run: Run, number: int) -> bool:
    """Before model step `number`, add the results of the tool round before it (once).

    False while a tool step of that round has not finished: a chord callback that
    fired early (a tool step's result counted twice after a redelivery) must wait.
    """
    previous = db.exec(
        select(Step)
        .where(Step.run_id == run.id, Step.kind == "model", col(Step.number) < number)
        .order_by(col(Step.number).desc())
    ).first()
    if previous is None or previous.output is None:
        return True
    calls = message_from_json(previous.output["message"]).tool_calls
    if not calls:
        return True
    last = db.exec(
        select(ThreadMessage)
        .where(ThreadMessage.thread_id == run.thread_id)
        .order_by(col(ThreadMessage.position).desc())
    ).first()
    if last is not None and last.role == "tool":
        return True
    tools = db.exec(
        select(Step).where(
            Step.run_id == run.id,
            col(Step.number) > previous.number,
            col(Step.number) < number,
        )
    ).all()
    results = {
        s.call_id or "": ToolResult(
            s.call_id or "", s.tool_name or "", s.output["content"], s.output["is_error"]
        )
        for s in tools
        if s.output is not None
    }
    if any(s.status in ("pending", "running") for s in tools):
        return False
    _append(db, run, loop.results_message(calls, results))
    return True
