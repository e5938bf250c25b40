"""A real worker logging JSON: every line an object, steps named on their lines, no secrets.

The worker imports this module as an agents module (STEPWISE_AGENTS), for `leaky`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks import Agent, RunNotFound, ToolContext, app, client, tool
from tests.test_integration_support import start_worker, wait_until

KEY = "sk-test-json-logs-0123456789abcdef"
PROMPT = "my private question about order 4711"
AGENTS = "tests.test_integration_support,tests.test_integration_json_logs"


@tool
def leak(ctx: ToolContext) -> str:
    """Log, print and raise with the configured API key in the message."""
    key = os.environ["OPENAI_API_KEY"]
    logging.getLogger("tests.leaky").warning("calling the API with %s", key)
    print(f"the key is {key}")
    raise RuntimeError(f"the server refused {key}")


leaky = Agent(
    name="leaky",
    instructions="Call the tool.",
    model="scripted:leaky",
    tools=(leak,),
    model_settings={
        "script": [{"tool_calls": [{"name": "leak", "arguments": {}}]}, {"text": "it failed"}]
    },
)


def _recorded(run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except RunNotFound:
        return False
    return True


def _lines(text: str) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_worker_logging_json_writes_objects_naming_run_and_step_and_no_key_or_prompt(
    worker: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pool: str
) -> None:
    monkeypatch.setattr("tests.test_integration_support.AGENTS", AGENTS)
    env = {"STEPWISE_LOG_FORMAT": "json", "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://x"}
    running = start_worker(worker, monkeypatch, tmp_path, extra_env=env, pool=pool, concurrency=2)
    run_id = str(uuid.uuid4())
    # By name, as another application would: the message itself carries the prompt.
    app.send_task(
        "stepwise.start_run", kwargs={"agent": "leaky", "input": PROMPT, "run_id": run_id}
    )

    wait_until("the worker to record the run", lambda: _recorded(run_id))
    run = client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    running.stop()  # everything it will ever log is in the file now
    text = running.output()

    lines = _lines(text)
    assert KEY not in text and PROMPT not in text
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["message"].endswith(" ready.") for line in lines)
    assert any(".> app:" in line["message"] for line in lines)  # the banner, as a record
    in_steps = [
        line
        for line in lines
        if line.get("task_name") in ("stepwise.model_step", "stepwise.tool_step")
        and not line["message"].endswith(" received")  # logged before the step began
    ]
    assert {(line["task_name"], line.get("step")) for line in in_steps} >= {
        ("stepwise.model_step", 1),
        ("stepwise.tool_step", 2),
        ("stepwise.model_step", 3),
    }
    assert all(line.get("run_id") == run_id and line.get("task_id") for line in in_steps)
    [raised] = [line for line in in_steps if line["logger"] == "tasks.tool_steps"]
    assert raised["step"] == 2 and raised["level"] == "WARNING"
    assert "RuntimeError: the server refused [REDACTED]" in raised["exc_info"]
    # What the tool logged and printed itself, from the thread it runs in.
    [logged] = [line for line in lines if line["message"] == "calling the API with [REDACTED]"]
    assert (logged.get("run_id"), logged.get("step")) == (run_id, 2)
    assert any(line["message"] == "the key is [REDACTED]" for line in lines)
    received = [line for line in lines if line["message"].endswith(" received")]
    assert {line["task_name"] for line in received} >= {"stepwise.start_run", "stepwise.tool_step"}
