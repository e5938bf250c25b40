"""The README's first command works in a fresh virtual environment with nothing configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with Stepwise installed from this checkout (not editable)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
        timeout=600,
    )
    return venv


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that configures Stepwise or Celery."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STEPWISE_", "CELERY_", "OPENAI_", "ANTHROPIC_", "PYTHON"))
    }


def test_demo_run_succeeds_on_the_embedded_default_in_a_fresh_virtualenv(
    fresh_venv: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(fresh_venv / "bin" / "stepwise"), "run", "demo", "What is 17 * 23?", "--follow"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "17 * 23 = 391" in done.stdout
    assert "tool calculate" in done.stdout
    assert "succeeded" in done.stdout
    assert "offline stand-in" in done.stderr
    assert (tmp_path / "stepwise.db").exists()


def test_fresh_install_reports_an_unknown_agent_with_exit_code_two(
    fresh_venv: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(fresh_venv / "bin" / "stepwise"), "run", "nobody", "hello"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "unknown agent 'nobody'" in done.stderr
