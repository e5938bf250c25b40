"""The event catalogue: every event type a run's log can hold, documented once.

Every type below except those in `LIVE_ONLY` is committed to the database with
the run's next sequence number before it is published. docs/events.md explains
each with its `data` fields; a test keeps the two in step.
"""

from __future__ import annotations

RUN_QUEUED = "run.queued"
RUN_STARTED = "run.started"
RUN_CANCEL_REQUESTED = "run.cancel_requested"
RUN_RESUMED = "run.resumed"
RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"
RUN_TIMED_OUT = "run.timed_out"
MODEL_STARTED = "model.started"
MODEL_DELTA = "model.delta"
MODEL_COMPLETED = "model.completed"
MODEL_RETRYING = "model.retrying"
MODEL_RETRACTED = "model.retracted"
TOOL_STARTED = "tool.started"
TOOL_COMPLETED = "tool.completed"
TOOL_FAILED = "tool.failed"
TOOL_OUTCOME_UNKNOWN = "tool.outcome_unknown"
STEP_SKIPPED = "step.skipped"

CATALOGUE = {
    RUN_QUEUED: "the run was recorded and waits for a worker",
    RUN_STARTED: "a worker picked the run up; the first model step follows",
    RUN_RESUMED: "the watchdog found the run stalled and sent its unfinished steps again",
    RUN_CANCEL_REQUESTED: "someone asked to cancel; the run stops at the next step boundary",
    MODEL_STARTED: "a model step began calling the model",
    MODEL_DELTA: "a streamed fragment of the model's reply (published live, never stored)",
    MODEL_COMPLETED: "the model answered; usage and the tool calls it asked for",
    MODEL_RETRYING: "the model call failed transiently and will be retried",
    MODEL_RETRACTED: "discard this step's streamed deltas: the model call is being made again",
    TOOL_STARTED: "a tool step began running its tool",
    TOOL_COMPLETED: "the tool returned; its result goes to the model",
    TOOL_FAILED: "the tool raised or its arguments were invalid; the error goes to the model",
    TOOL_OUTCOME_UNKNOWN: "a tool's worker died mid-call; the call is not run again",
    STEP_SKIPPED: "a step did not run because the run had already stopped",
    RUN_SUCCEEDED: "terminal: the run finished with a final answer",
    RUN_FAILED: "terminal: the run failed; `reason` says why",
    RUN_CANCELLED: "terminal: the run was cancelled",
    RUN_TIMED_OUT: "terminal: the run passed its deadline",
}

LIVE_ONLY = frozenset({MODEL_DELTA})
TERMINAL_EVENTS = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED, RUN_TIMED_OUT})
EVENT_FOR_STATUS = {
    "succeeded": RUN_SUCCEEDED,
    "failed": RUN_FAILED,
    "cancelled": RUN_CANCELLED,
    "timed_out": RUN_TIMED_OUT,
}
