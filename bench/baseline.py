"""The baseline the runtime is measured against: a bare Celery chain of no-op tasks.

The same broker, the same settings (`celeryconfig`), the same pool as the Stepwise
workers, on a queue of its own. Each task appends the time it ran, so a chain's
result holds the hand-off time of every hop. `bench.run` times chains of two: every
message of a chain carries the rest of it, and a step's carries one signature at most.

    celery -A bench.baseline worker -P gevent -c 100 -Q bench.baseline
"""

from __future__ import annotations

import time

from celery import Celery

QUEUE = "bench.baseline"

app = Celery("bench-baseline")
app.config_from_object("celeryconfig")
app.conf.task_routes = {"bench.hop": {"queue": QUEUE}}


@app.task(name="bench.hop", acks_late=True)
def hop(stamps: list[float]) -> list[float]:
    """Do nothing but note when this hop ran."""
    return [*stamps, time.time()]
