"""JSON logs: one object per line, with the task's run and step, and no secrets.

With STEPWISE_LOG_FORMAT=json a worker (or beat) keeps Celery's own logging set-up
(its handlers, `--logfile`, `--loglevel`, the redirection of print()) and swaps
each handler's formatter for `JsonLines` once Celery has made it
(`after_setup_logger`, `after_setup_task_logger`). The startup banner, which
Celery prints past the logging, becomes one record.

A record logged while a task runs carries `task_name`, `task_id` and, for the
tasks of a run, `run_id` and `step`. Structured extras are dropped (Celery's
carry task arguments, and a run's input when it was started by name); the
configured secrets and anything shaped like a key are replaced by [REDACTED].
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from tasks.observability.genai import task_ids

log = logging.getLogger("celery.worker")

REDACTED = "[REDACTED]"
_FIRST = ("time", "level", "logger", "message")
_PLAIN = (str, int, float, bool, type(None))
# Key-shaped strings whatever their source: provider keys, bearer tokens, URL passwords.
_PATTERNS = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*"), r"\1" + REDACTED),
    (re.compile(r"([a-z][a-z0-9+.\-]*://[^\s:/@\"]*):[^\s@/\"]+@"), r"\1:" + REDACTED + "@"),
)

_task: ContextVar[dict[str, Any] | None] = ContextVar("stepwise_log_task", default=None)


class Scrubber:
    """Replaces the given secrets, and key-shaped strings, with [REDACTED]."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants = {form for secret in secrets if secret for form in _forms(secret)}
        ordered = sorted(variants, key=lambda s: (-len(s), s))  # the longest first
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def _forms(secret: str) -> tuple[str, str]:
    """The secret as written, and as it appears inside a JSON string."""
    return secret, json.dumps(secret)[1:-1]


class JsonLines(JsonFormatter):
    """A record as one JSON object: time, level, logger, message, the task's ids, then
    plain extras, a traceback as `exc_info`; scrubbed as a whole."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
        self.scrub = scrub

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """The standard fields, plain extras only, and the task's ids."""
        super().add_fields(log_data, record, message_dict)
        for key in [k for k, v in log_data.items() if not isinstance(v, _PLAIN) and k != "time"]:
            del log_data[key]
        log_data.update(_task.get() or _announced(record))

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """The four standard fields first, for people reading the lines."""
        first = {key: log_data.pop(key) for key in _FIRST if key in log_data}
        return first | log_data

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        """The line, scrubbed."""
        return self.scrub(super().serialize_log_record(log_data))


def _announced(record: logging.LogRecord) -> dict[str, Any]:
    """Celery logs a received task with its name and id as the message's arguments."""
    args = record.args
    if isinstance(args, dict) and isinstance(args.get("id"), str) and args.get("name"):
        return {"task_name": str(args["name"]), "task_id": args["id"]}
    return {}


def task_context(task: Any) -> dict[str, Any]:
    """The log fields of a task that is about to run."""
    request = task.request
    run_id, step = task_ids(task.name, request.args, request.kwargs)
    found: dict[str, Any] = {"task_name": task.name, "task_id": request.id}
    if run_id is not None:
        found["run_id"] = run_id
    if step is not None:
        found["step"] = step
    return found


class CeleryJsonLogs:
    """The Celery signal receivers that make a worker log JSON."""

    def __init__(self, scrub: Scrubber) -> None:
        self.scrub = scrub
        self.worker: Any = None  # the `celery worker` program, once it starts

    def formatter(self) -> JsonLines:
        """A fresh formatter."""
        return JsonLines(self.scrub)

    def on_logger(self, logger: logging.Logger | None = None, **_: Any) -> None:
        """`after_setup_logger`, `after_setup_task_logger`: JSON on every handler."""
        from celery.utils.log import get_multiprocessing_logger

        for each in (logger, get_multiprocessing_logger()):
            for handler in getattr(each, "handlers", ()):
                handler.setFormatter(self.formatter())

    def on_init(self, instance: Any = None, **_: Any) -> None:
        """`celeryd_init`: no banner on stdout (`on_setup` logs it instead), and JSON
        for the warnings Celery gives before it sets up logging (running as root)."""
        self.worker = instance
        if instance is not None:
            instance.quiet = True
        root = logging.getLogger()
        if not root.handlers:  # Celery replaces it with its own in a moment
            early = logging.StreamHandler(sys.__stderr__)
            early.setFormatter(self.formatter())
            root.addHandler(early)
        logging.captureWarnings(True)

    def on_setup(self, instance: Any = None, **_: Any) -> None:
        """`celeryd_after_setup`: the banner's facts as one record."""
        if instance is not None:
            log.info("%s", instance.startup_info(artlines=False).strip())

    def on_ready(self, **_: Any) -> None:
        """`worker_ready`: SIGTERM's handler again, without the notice Celery writes to
        stdout past the logging; `on_shutting_down` logs it."""
        if self.worker is None:
            return
        from celery.apps.worker import install_worker_term_handler

        with contextlib.suppress(ValueError):  # not the main thread: Celery's notice stays
            install_worker_term_handler(self.worker, verbose=False)

    def on_shutting_down(self, sig: Any = None, how: Any = None, **_: Any) -> None:
        """`worker_shutting_down`: the notice, as a record."""
        log.info("worker: %s shutdown (%s)", how, sig)

    def on_prerun(self, task: Any = None, **_: Any) -> None:
        """`task_prerun`: the task's ids go on every record until it ends."""
        if task is not None:
            _task.set(task_context(task))

    def on_postrun(self, **_: Any) -> None:
        """`task_postrun`."""
        _task.set(None)
