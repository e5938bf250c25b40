"""The Celery app and the step tasks: thin shells around `tasks.steps`.

Task names are a public contract. Arguments are ids only (a run id and a step
number), so a broker message never carries a prompt, an output or a key.
"""

from __future__ import annotations

import logging
import os
import random
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

from celery import Celery, Task, chain, chord
from celery.canvas import Signature
from celery.signals import beat_init, worker_init, worker_process_init

from providers.errors import Retryable
from storage import Tx
from storage.models import utcnow
from tasks import records, runs, schedules, steps, timing, tool_steps, watchdog
from tasks.agents import Agents
from tasks.demo import demo_agent
from tasks.errors import ConfigError, StepFailed, UserError
from tasks.observability import observe
from tasks.runtime import Runtime, current_runtime, forget_runtimes
from tasks.settings import Settings

log = logging.getLogger(__name__)

app = Celery("stepwise")
app.config_from_object("celeryconfig")
observe(app)  # metrics, traces and JSON logs, each only when configured (docs/observability.md)

MAX_RETRIES = 8
# A run queued behind an earlier run of its schedule looks again after 1 s, then
# ever less often, up to every 5 s; it waits for as long as the earlier run takes.
QUEUE_POLL_MAX = 5.0
QUEUE_WAIT_RETRIES = 10**9  # Celery reads max_retries=None as "the default", 3
# A model step whose tool round is unfinished checks again every 0.5 s, for up to an hour.
WAIT_FOR_TOOLS = 7200
_DATABASE_DOWN = records.DATABASE_DOWN


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    forget_runtimes()


@worker_init.connect
def _check_timing(**_: Any) -> None:
    """Refuse to start a worker whose Redis broker could redeliver a step still running."""
    if str(app.conf.broker_url or "").split(":", 1)[0] not in ("redis", "rediss", "sentinel"):
        return  # AMQP and the others do not redeliver on a timer
    settings = Settings.from_env()
    agents = Agents.load(settings.agents_modules, [demo_agent(settings)])
    visibility = float(app.conf.broker_transport_options.get("visibility_timeout", 3600))
    found = timing.problems(agents, visibility)
    if not found:
        return
    text = (
        "the settings contradict each other: raise STEPWISE_VISIBILITY_TIMEOUT or lower these "
        "(docs/reliability.md):\n  " + "\n  ".join(found)
    )
    # Crash tests shorten the visibility timeout on purpose, to see redelivery soon.
    if os.environ.get("STEPWISE_TIMING_CHECK") == "warn":
        log.warning("%s", text)
        return
    raise SystemExit(f"stepwise: {text}")


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter, capped."""
    return float(random.uniform(0, min(timing.MAX_BACKOFF, 2.0 ** (retries + 1))))


def _where(task: Task) -> records.Where:
    delivery = task.request.delivery_info or {}
    return records.Where(task_id=task.request.id, queue=delivery.get("routing_key"))


def _retry(
    task: Task, countdown: float, error: Exception, max_retries: int | None = MAX_RETRIES
) -> NoReturn:
    if task.request.is_eager:
        # apply() retries at once, ignoring countdown: wait here instead.
        time.sleep(min(countdown, 60.0))
    raise task.retry(exc=error, countdown=countdown, max_retries=max_retries)


def _send_next(task: Task, rt: Runtime, run_id: str, after: records.Next) -> None:
    """Dispatch what follows; if the broker refuses, retry the task, whose record
    is already written, so the retry only dispatches again."""
    try:
        dispatch(rt, run_id, after)
    except Exception as error:
        log.warning("could not dispatch after run %s: %s", run_id, error)
        _retry(task, backoff(task.request.retries), error)


def _give_up(rt: Runtime, run_id: str, number: int | None, what: str, error: Exception) -> None:
    try:
        steps.fail_run(rt, run_id, f"{what}: {type(error).__name__}: {error}", number)
    except Exception:
        log.exception("could not record the failure of run %s", run_id)


@app.task(name="stepwise.start_run", bind=True, acks_late=True)
def start_run(
    self: Task,
    run_id: str | None = None,
    agent: Any = None,
    input: Any = None,
    thread: Any = None,
    idempotency_key: Any = None,
    metadata: Any = None,
    owner: Any = None,
    **unexpected: Any,
) -> str:
    """Record the run if the message describes a new one, then start its loop."""
    rt = current_runtime()
    try:
        if agent is not None or input is not None or unexpected:
            fields = {
                "agent": agent,
                "input": input,
                "thread": thread,
                "idempotency_key": idempotency_key,
                "metadata": metadata,
                "owner": owner,
            }
            run_id, started = _accept(rt, run_id, fields, unexpected)
            if started is not None:  # a new run, recorded and started in one transaction
                _send_next(self, rt, run_id, started)
                return run_id
        if not runs.is_uuid(run_id):
            raise UserError("stepwise.start_run needs a UUID run_id, or an agent and an input")
        behind = schedules.waiting_behind(rt, run_id)
        if behind is not None:  # its schedule queues runs: this one starts after `behind`
            waiting = schedules.Waiting(f"run {run_id} waits for run {behind} of its schedule")
            poll = min(QUEUE_POLL_MAX, 1.0 + self.request.retries / 4)
            _retry(self, poll, waiting, max_retries=QUEUE_WAIT_RETRIES)
        _send_next(self, rt, run_id, steps.start(rt, run_id))
        return run_id
    except _DATABASE_DOWN as error:
        _retry(self, backoff(self.request.retries), error)


def _accept(
    rt: Runtime, run_id: Any, fields: dict[str, Any], unexpected: dict[str, Any]
) -> tuple[str, records.Next | None]:
    """Validate and record a run sent by name from another application. A new run is
    started in the same transaction: (run id, what follows it), or (run id, None) for
    a run recorded before (a message sent again, or one a client recorded).

    A bad message raises `UserError` and writes nothing: the task fails with the
    reason, visible in Flower and to the caller's AsyncResult.
    """
    if unexpected:
        raise UserError(f"stepwise.start_run got unexpected arguments: {sorted(unexpected)}")

    started: list[records.Next] = []

    def start(tx: Tx, new_run: str) -> None:
        started.append(steps.start_in(tx, rt, new_run))

    run_id, _ = runs.accept(rt, run_id=run_id, **fields, then=start)
    return run_id, started[0] if started else None


@app.task(name="stepwise.model_step", bind=True, acks_late=True, ignore_result=True)
def model_step(self: Task, run_id: str, number: int) -> None:
    """Call the model for step `number` of the run."""
    rt = current_runtime()
    try:
        after = steps.model_step(rt, run_id, number, _where(self))
    except StepFailed:
        raise  # recorded: the task fails with the reason for Flower, and nothing retries it
    except Retryable as error:
        if self.request.retries >= MAX_RETRIES:
            reason = f"model step {number} gave up after retries"
            _give_up(rt, run_id, number, reason, error)
            raise StepFailed(f"{reason}: {error}") from error
        countdown = (
            min(error.retry_after, timing.MAX_COUNTDOWN)
            if error.retry_after is not None
            else backoff(self.request.retries)
        )
        steps.note_retry(rt, run_id, number, error, countdown, self.request.retries + 1)
        _retry(self, countdown, error)
    except records.NotReady as error:
        if self.request.retries >= WAIT_FOR_TOOLS:
            reason = "the tool round before it never finished"
            _give_up(rt, run_id, number, reason, error)
            raise StepFailed(f"model step {number}: {reason}") from error
        _retry(self, 0.5, error, max_retries=WAIT_FOR_TOOLS)
    except _DATABASE_DOWN as error:
        _retry(self, backoff(self.request.retries), error)
    except Exception as error:
        _give_up(rt, run_id, number, f"model step {number} crashed", error)
        raise
    _send_next(self, rt, run_id, after)


@app.task(name="stepwise.tool_step", bind=True, acks_late=True)
def tool_step(self: Task, run_id: str, number: int) -> int:
    """Run the tool call recorded as step `number` of the run."""
    rt = current_runtime()
    try:
        tool_steps.tool_step(rt, run_id, number, _where(self))
    except _DATABASE_DOWN as error:
        _retry(self, backoff(self.request.retries), error)
    except Exception as error:
        _give_up(rt, run_id, number, f"tool step {number} crashed", error)
        raise
    return number


@app.task(name="stepwise.finish_run", bind=True, acks_late=True, ignore_result=True)
def finish_run(self: Task, run_id: str) -> None:
    """Mark the run succeeded with the model's final answer."""
    rt = current_runtime()
    try:
        steps.finish_run(rt, run_id)
    except _DATABASE_DOWN as error:
        _retry(self, backoff(self.request.retries), error)


@app.task(name="stepwise.watchdog", bind=True, ignore_result=True)
def watchdog_sweep(self: Task) -> int:
    """Resume or end the runs that stopped making progress (Celery beat runs this)."""
    rt = current_runtime()
    resumed = watchdog.sweep(rt)
    for found in resumed:
        try:
            watchdog_dispatch(rt, found)
        except Exception:
            # The next sweep finds the run quiet again and sends it once more.
            log.exception("watchdog: could not resume run %s", found.run_id)
    return len(resumed)


class _Stamped(Task):  # type: ignore[misc]
    """Stamps the tick a beat message fires for, so every beat sends the same key for it."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        kwargs = dict(kwargs or {})
        if kwargs.get("tick") is None:
            window = float(kwargs.get("window") or schedules.CRON_WINDOW)
            kwargs["tick"] = schedules.tick_of(window, utcnow()).isoformat()
        return super().apply_async(args, kwargs, **options)


@app.task(name=schedules.TASK, bind=True, base=_Stamped, acks_late=True)
def scheduled_run(self: Task, schedule: str, tick: str | None = None, window: float = 0) -> str:
    """Start the run of a schedule's tick, as its overlap policy says (Celery beat sends this)."""
    rt = current_runtime()
    try:
        found = known_schedules(rt.settings).get(schedule)
        at = datetime.fromisoformat(tick) if tick else schedules.tick_of(found.window, utcnow())
        fired = schedules.fire(rt, found, at.astimezone(UTC))
    except _DATABASE_DOWN as error:
        _retry(self, backoff(self.request.retries), error)
    what = f"schedule {schedule}, tick {at.isoformat()}"
    if fired.outcome == "skipped":
        log.info("%s: skipped, as run %s has not ended", what, fired.behind[0])
    elif fired.run_id is not None and fired.outcome != "duplicate":
        log.info("%s: %s run %s", what, fired.outcome, fired.run_id)
        try:
            watchdog_dispatch(rt, watchdog.Resume(fired.run_id, start=True))
        except Exception:  # the run is recorded: the watchdog sends it later
            log.exception("%s: could not send run %s", what, fired.run_id)
    return fired.outcome


def known_schedules(settings: Settings) -> schedules.Schedules:
    """The schedules of the agent modules and of the Celery configuration."""
    return schedules.Schedules.load(settings.agents_modules, app.conf.get("stepwise_schedules"))


@app.on_after_finalize.connect
def _beat_entries(sender: Celery, **_: Any) -> None:
    """Add every schedule to beat's `beat_schedule` (before a beat reads it)."""
    try:
        found = known_schedules(Settings.from_env())
    except ConfigError as error:  # beat refuses to start on it (below); others go on
        log.error("stepwise: %s", error)
        return
    sender.conf.beat_schedule = {**(sender.conf.beat_schedule or {}), **found.beat_entries()}


@beat_init.connect
def _check_schedules(**_: Any) -> None:
    """Refuse to start a beat whose schedules are declared wrong."""
    try:
        found = known_schedules(Settings.from_env())
    except ConfigError as error:
        raise SystemExit(f"stepwise: {error}") from None
    log.info("stepwise: %d schedule(s): %s", len(list(found)), ", ".join(s.name for s in found))


def watchdog_dispatch(rt: Runtime, found: watchdog.Resume) -> None:
    """Send a resumed run's unfinished work again: its start, or its open steps."""
    if not found.start:
        dispatch(rt, found.run_id, found.after)
    elif rt.settings.embedded:
        start_run.si(run_id=found.run_id).apply()
    else:
        start_run.si(run_id=found.run_id).apply_async()


def canvas(run_id: str, after: records.Next) -> Signature | None:
    """The canvas for what follows a step: a chord of parallel tool steps, a chain, or one task."""
    then: Signature | None = None
    if after.model is not None:
        then = model_step.si(run_id, after.model)
    elif after.finish:
        then = finish_run.si(run_id)
    tools = [
        tool_step.si(run_id, number).set(queue=queue) if queue else tool_step.si(run_id, number)
        for number, queue in after.tools
    ]
    if len(tools) > 1 and then is not None:
        return chord(tools, then)
    if len(tools) == 1 and then is not None:
        # A chain needs no stored result (a chord counts them): one Redis write less.
        return chain(tools[0].set(ignore_result=True), then)
    return then


def dispatch(rt: Runtime, run_id: str, after: records.Next) -> None:
    """Send what follows to the workers, or run it here in the embedded default."""
    signature = canvas(run_id, after)
    if signature is None:
        return
    if rt.settings.embedded:
        signature.apply()
    else:
        signature.apply_async()
