"""What each step does, as plain functions over the runtime: no Celery in here.

Every step follows the same shape: lock the run and claim the step in one short
transaction, do the slow part (the model call, the tool) with no transaction
open, then record the outcome and decide what follows in a second transaction.
A step returns `Next`, which the Celery shell turns into canvas. A redelivered
step finds its record and answers with the same `Next` without calling the
model or the tool again.
"""

from __future__ import annotations

from datetime import timedelta

from providers.errors import Fatal, Retryable
from providers.types import (
    Delta,
    Message,
    ModelRequest,
    ModelResponse,
    message_from_json,
    message_to_json,
    usage_from_json,
    usage_to_json,
)
from storage import TERMINAL, Tx
from storage.deltas import LiveDeltas
from storage.events import (
    MODEL_COMPLETED,
    MODEL_DELTA,
    MODEL_RETRACTED,
    MODEL_RETRYING,
    MODEL_STARTED,
    RUN_STARTED,
)
from storage.models import utcnow
from storage.rows import RunRow, StepRow, steps_of
from storage.store import Db, live_payload
from tasks import loop
from tasks.agents import Agent
from tasks.errors import StepFailed, UnknownAgent
from tasks.records import (
    NOTHING,
    Next,
    NotReady,
    Where,
    add_steps,
    append,
    claim,
    count_model_calls,
    end_step,
    find_step,
    invalid_streak,
    locked_run_steps,
    locked_step,
    recorded,
    step_of,
    stopped,
    thread_history,
    tool_results,
)
from tasks.runs import finish, locked_run
from tasks.runtime import Runtime
from tasks.tool_steps import tool_of

__all__ = [
    "Next",
    "NotReady",
    "Where",
    "fail_run",
    "finish_run",
    "model_step",
    "note_retry",
    "start",
]


def start(rt: Runtime, run_id: str) -> Next:
    """Move a queued run to running and schedule its first model step."""
    with rt.store.transaction() as tx:
        return start_in(tx, rt, run_id)


def start_in(tx: Tx, rt: Runtime, run_id: str) -> Next:
    """`start`, inside a transaction of the caller's (the one that recorded the run, say)."""
    run = locked_run(tx.db, run_id)
    if run.status in TERMINAL:
        return NOTHING
    if run.status != "queued":
        first = step_of(tx.db, run_id, 1)
        return Next(model=1) if first.status == "pending" else NOTHING
    try:
        agent = rt.agents.get(run.agent)
    except UnknownAgent as error:
        finish(tx, run, "failed", reason=f"{error} (on this worker)")
        return NOTHING
    now = utcnow()
    deadline = now + timedelta(seconds=agent.deadline)
    tx.write(run, status="running", started_at=now, deadline_at=deadline)
    append(tx.db, run, Message.text("user", run.input))
    add_steps(tx.db, run_id, [(1, None)])
    tx.emit(
        run_id,
        RUN_STARTED,
        {"agent": agent.name, "model": agent.model, "deadline": deadline.isoformat()},
    )
    return Next(model=1)


def model_step(rt: Runtime, run_id: str, number: int, where: Where) -> Next:
    """Call the model once, record its response, and decide what follows.

    A step that fails its run records the failure, then raises `StepFailed` with
    the reason, so its Celery task fails readably (in Flower) and nothing retries.
    """
    begun = _begin(rt, run_id, number, where)
    if isinstance(begun, Next):
        return begun
    if isinstance(begun, str):
        raise StepFailed(begun)
    agent, request, attempt, earlier_calls = begun
    streamed = 0
    live = LiveDeltas(
        rt.store.fanout,
        run_id,
        lambda data: live_payload(run_id, MODEL_DELTA, data, number),
        rt.settings.delta_interval,
    )

    def on_delta(delta: Delta) -> None:
        nonlocal streamed
        streamed += 1
        live.add({"kind": delta.kind, "text": delta.text, "index": delta.index, "attempt": attempt})

    try:
        try:
            response = rt.providers.for_model(agent.model).complete(request, on_delta)
        finally:
            live.close()  # every delta is out before the step records or retracts them
    except Retryable:
        _release(rt, run_id, number, retract=streamed > 0)
        raise
    except Fatal as error:
        reason = f"model step {number} failed: {error}"
        with rt.store.transaction() as tx:
            run, step = locked_step(tx.db, run_id, number)
            end_step(tx, step, "failed", error=str(error))
            finish(tx, run, "failed", reason=reason)
        raise StepFailed(reason) from error
    model_calls = earlier_calls + 1  # with this one: a run's model steps run one at a time
    return recorded(lambda: _record_response(rt, run_id, number, agent, response, model_calls))


def _begin(
    rt: Runtime, run_id: str, number: int, where: Where
) -> Next | str | tuple[Agent, ModelRequest, int, int]:
    """Claim the step: what follows when there is nothing to call, the reason when the
    run failed here, else the agent, the request, the attempt's number and how many
    model calls of the run have succeeded before this one."""
    with rt.store.transaction() as tx:
        run, steps = locked_run_steps(tx.db, run_id, number)
        step = find_step(steps, run_id, number)
        if step.status == "succeeded":
            return _continuation(rt, tx.db, run, step)
        if stopped(tx, run, step):
            return NOTHING
        try:
            agent = rt.agents.get(run.agent)
        except UnknownAgent as error:
            end_step(tx, step, "failed", error=str(error))
            finish(tx, run, "failed", reason=f"{error} (on this worker)")
            return f"{error} (on this worker)"
        messages = thread_history(tx.db, run.thread_id)
        results = tool_results(steps, number, messages)
        if results is not None:
            append(tx.db, run, results)
            messages = (*messages, results)
        streak, last_error = invalid_streak(steps)
        if streak >= agent.max_invalid_turns:
            reason = (
                f"the model asked for an invalid tool call {streak} turn(s) in a row "
                f"(max_invalid_turns={agent.max_invalid_turns}); the last: {last_error}"
            )
            end_step(tx, step, "failed", error=reason)
            finish(tx, run, "failed", reason=reason)
            return reason
        interrupted = step.status == "running"  # an earlier attempt died mid-call
        if not claim(tx, step, where, agent.step_timeout):
            return NOTHING  # another copy of this step is running it
        if interrupted:
            _retract(tx, run_id, number, step.attempts - 1, "the earlier attempt was interrupted")
        tx.emit(run_id, MODEL_STARTED, {"model": agent.model, "attempt": step.attempts}, number)
        request = ModelRequest(
            model=agent.model,
            instructions=agent.instructions,
            messages=messages,
            tools=tuple(t.spec() for t in agent.tools),
            settings=dict(agent.model_settings),
        )
        return agent, request, step.attempts, count_model_calls(steps)


def _retract(tx: Tx, run_id: str, number: int, attempt: int, reason: str) -> None:
    tx.emit(run_id, MODEL_RETRACTED, {"attempt": attempt, "reason": reason}, number)


def _release(rt: Runtime, run_id: str, number: int, *, retract: bool) -> None:
    """Hand a model step back for its retry; retract the deltas this attempt streamed."""
    with rt.store.transaction() as tx:
        run, step = locked_step(tx.db, run_id, number)
        if step.status != "running" or run.status in TERMINAL:
            return
        tx.write(step, status="pending", lease_until=None)
        if retract:
            _retract(tx, run_id, number, step.attempts, "the call failed and will be retried")


def _record_response(
    rt: Runtime,
    run_id: str,
    number: int,
    agent: Agent,
    response: ModelResponse,
    model_calls: int,
) -> Next:
    """Record the response of the run's model call number `model_calls`, and decide
    what follows.

    It reads only its own step: what it decides on besides the response is the count of
    model calls, which no other step can change while this one runs.
    """
    with rt.store.transaction() as tx:
        run, step = locked_step(tx.db, run_id, number)
        if step.status == "succeeded":  # a duplicate delivery finished first
            return _continuation(rt, tx.db, run, step)
        cost = rt.prices.cost(response.usage, response.model, agent.model)
        end_step(
            tx,
            step,
            "succeeded",
            output={
                "message": message_to_json(response.message),
                "finish_reason": response.finish_reason,
                "model": response.model,
            },
            usage=usage_to_json(response.usage),
            cost_usd=cost,
        )
        append(tx.db, run, response.message)
        run_cost = run.cost_usd if cost is None else (run.cost_usd or 0.0) + cost
        usage = usage_to_json(usage_from_json(run.usage) + response.usage)
        tx.write(run, usage=usage, cost_usd=run_cost)
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
                "cost_usd": step.cost_usd,
                "model": response.model,
            },
            number,
        )
        if stopped(tx, run, None):
            return NOTHING
        decision = loop.decide(response, model_calls=model_calls, max_steps=agent.max_steps)
        if isinstance(decision, loop.Fail):
            finish(tx, run, "failed", reason=decision.reason)
            return NOTHING
        if isinstance(decision, loop.Finish):  # in this transaction: no task of its own
            finish(tx, run, "succeeded", result=decision.answer)
            return NOTHING
        if isinstance(decision, loop.Continue):
            add_steps(tx.db, run_id, [(number + 1, None)])
            return Next(model=number + 1)
        plan = loop.plan_tools(number, len(decision.calls))
        queues = []
        for call, tool_number in zip(decision.calls, plan.tool_steps, strict=True):
            tool = agent.tool(call.name)
            queues.append((tool_number, tool.queue if tool else None))
        calls = list(zip(plan.tool_steps, decision.calls, strict=True))
        add_steps(tx.db, run_id, [*calls, (plan.next_model_step, None)])
        return Next(tools=tuple(queues), model=plan.next_model_step)


def finish_run(rt: Runtime, run_id: str) -> None:
    """End a run whose model gave its final answer.

    A model step that records a final answer ends its run itself; this serves the
    watchdog and `stepwise.finish_run` messages sent by an earlier version.
    """
    with rt.store.transaction() as tx:
        run = locked_run(tx.db, run_id)
        if run.status in TERMINAL or stopped(tx, run, None):
            return
        answered = [
            s for s in steps_of(tx.db, run_id) if s.kind == "model" and s.status == "succeeded"
        ]
        last = answered[-1] if answered else None
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
        for step in [] if number is None else steps_of(tx.db, run_id, [number]):
            if step.status in ("pending", "running"):
                end_step(tx, step, "failed", error=reason)
        finish(tx, run, "failed", reason=reason)


def _continuation(rt: Runtime, db: Db, run: RunRow, step: StepRow) -> Next:
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
        after = steps_of(db, run.id, [step.number + 1])
        return Next(model=step.number + 1) if after and after[0].status == "pending" else NOTHING
    plan = loop.plan_tools(step.number, len(calls))
    later = steps_of(db, run.id, [*plan.tool_steps, plan.next_model_step])
    if any(s.status != "pending" for s in later):
        return NOTHING
    queues = []
    for call, number in zip(calls, plan.tool_steps, strict=True):
        tool = tool_of(rt, run.agent, call.name)
        queues.append((number, tool.queue if tool else None))
    return Next(tools=tuple(queues), model=plan.next_model_step)
