"""A worker whose Redis visibility timeout could redeliver a live step refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_a_worker_refuses_to_start_when_the_visibility_timeout_is_shorter_than_a_step(
    distributed: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **distributed,
        "PYTHONPATH": str(ROOT),
        "STEPWISE_VISIBILITY_TIMEOUT": "200",  # the agents' steps may run 300 s
    }
    command = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo"]

    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "stepwise: the settings contradict each other" in output
    assert "agent 'demo': step_timeout 300 s is not below the visibility timeout (200 s)" in output
    assert "ready." not in output
