"""Celery settings for Stepwise, read from the environment with safe defaults.

With CELERY_BROKER_URL unset Stepwise runs in process (the embedded default) and
nothing here is used to reach a broker. Every setting below is an ordinary
Celery setting: override any of them in your own config module.
"""

import os

from kombu import Queue

_broker = os.environ.get("CELERY_BROKER_URL", "")
_redis = os.environ.get("STEPWISE_REDIS_URL", "")

broker_url = _broker or "memory://"
if _broker.startswith(("redis://", "rediss://")):
    # Kombu's Redis transport, but one Redis client per channel, not one per command
    # (tasks/transport.py); the messages and keys are the same.
    broker_transport = "tasks.transport:Transport"
# Chords need a result backend: the broker when it is Redis, else Stepwise's Redis.
result_backend = os.environ.get("CELERY_RESULT_BACKEND") or (
    _broker if _broker.startswith(("redis://", "rediss://")) else _redis or None
)

# JSON only, everywhere: a pickled message is refused.
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A step is acknowledged only once it has finished, and redelivered if its worker dies.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = True
broker_connection_retry_on_startup = True

# Redis redelivers a message nobody acknowledged within the visibility timeout. It
# must exceed the longest step (and any retry countdown), in every place it is read.
visibility_timeout = int(os.environ.get("STEPWISE_VISIBILITY_TIMEOUT", "3600"))
_transport = {"visibility_timeout": visibility_timeout}
if os.environ.get("STEPWISE_REDIS_KEY_PREFIX"):
    # Lets several deployments (or test sessions) share one Redis without crosstalk.
    _transport["global_keyprefix"] = os.environ["STEPWISE_REDIS_KEY_PREFIX"]
broker_transport_options: dict[str, object] = dict(_transport)
result_backend_transport_options = dict(_transport)
# How long a worker's BRPOP on a Redis broker blocks before it is sent again (kombu's
# `polling_interval`, 1 s unless set). A warm shutdown waits for the BRPOP in flight, so
# a shorter one stops an idle worker sooner, for a few more round trips while it idles.
if os.environ.get("STEPWISE_BROKER_POLL_INTERVAL"):
    broker_transport_options["polling_interval"] = float(
        os.environ["STEPWISE_BROKER_POLL_INTERVAL"]
    )
result_expires = 24 * 3600

# Task and worker events, so Flower shows every step as it happens, queue included
# (only `task-sent` carries it), from the moment it is sent. No STARTED state in the
# result backend: nothing reads it, and it is one more Redis write per task.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = False

# The watchdog resumes or ends runs that stopped making progress (`celery -A tasks beat`).
beat_schedule = {
    "stepwise.watchdog": {
        "task": "stepwise.watchdog",
        "schedule": float(os.environ.get("STEPWISE_WATCHDOG_INTERVAL", "60")),
    },
}

# Scheduled runs (docs/schedules.md) join this in every process, from `stepwise_schedules`
# below and from the `Schedule`s of the STEPWISE_AGENTS modules. Dicts here, e.g.
#   {"name": "nightly", "agent": "reporter", "cron": "0 3 * * *", "input": "...",
#    "owner": "ops", "overlap": "skip"}
stepwise_schedules: list[dict[str, object]] = []

# Beat wakes at least every 5 s, so a RedBeat lock (below) never lapses between ticks.
beat_max_loop_interval = 5
# RedBeat (`celery -A tasks beat -S redbeat.RedBeatScheduler`, the `redbeat` extra): the
# schedule and a lock live in Redis, so a second beat waits as a standby instead of
# sending every tick again. It takes over within the lock timeout when the first dies.
redbeat_redis_url = os.environ.get("STEPWISE_REDBEAT_URL") or _redis or result_backend
redbeat_key_prefix = os.environ.get("STEPWISE_REDIS_KEY_PREFIX", "") + "redbeat:"
redbeat_lock_timeout = int(os.environ.get("STEPWISE_REDBEAT_LOCK_TIMEOUT", "30"))

# Model calls wait on the network (a thread or gevent pool with high concurrency);
# tools get their own workers. `celery -A tasks worker` with no -Q consumes all three.
task_default_queue = "celery"
task_queues = (Queue("celery"), Queue("stepwise.model"), Queue("stepwise.tools"))
task_routes = {
    "stepwise.model_step": {"queue": os.environ.get("STEPWISE_MODEL_QUEUE", "stepwise.model")},
    "stepwise.tool_step": {"queue": os.environ.get("STEPWISE_TOOL_QUEUE", "stepwise.tools")},
}
