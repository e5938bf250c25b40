"""Bare runs: Celery alone doing the tasks of a run, the floor of the concurrency scenario.

A bare run is the tasks a Stepwise run of the `bench` agent is made of, on the same
workers, queues, broker and settings, with none of a step's own work: a start, then a
model step and its tool step(s) for each round of the tool script, then the last model
step. Each task sends the next one itself, as a step does; a model step sleeps for the
model's latency instead of calling the model (the last one also for the time its answer
takes to stream, `tail`). A round of several tool calls is that
many tasks one after another (Stepwise runs them in parallel, as a chord): the same
number of tasks, which is what the floor counts.

The Stepwise workers of `bench.run` import this module (`celery worker -I bench.bare`);
the last task of a bare run pushes the time it ended onto a Redis list.
"""

from __future__ import annotations

import os
import time
from functools import cache

import redis

from tasks.app import app

TASK = "bench.bare_step"
QUEUES = {"start": "celery", "model": "stepwise.model", "tool": "stepwise.tools"}


def shape(rounds: str) -> list[str]:
    """The tasks of a run, in order, for a tool script such as `1,1`."""
    tasks = ["start"]
    for calls in filter(None, rounds.split(",")):
        tasks += ["model"] + ["tool"] * int(calls)
    return [*tasks, "model"]


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["STEPWISE_REDIS_URL"])


@app.task(name=TASK, acks_late=True, ignore_result=True)
def bare_step(number: int, latency: float, tasks: list[str], ended: str, tail: float = 0.0) -> None:
    """Task `number` of a bare run: sleep if it is a model step, then send the next."""
    following = number + 1
    if tasks[number] == "model":
        time.sleep(latency + (tail if following == len(tasks) else 0.0))
    if following < len(tasks):
        following_task = bare_step.si(following, latency, tasks, ended, tail)
        following_task.apply_async(queue=QUEUES[tasks[following]])
    else:
        _redis().rpush(ended, time.time())
