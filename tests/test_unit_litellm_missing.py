"""Without the litellm extra: a clear error that says how to install it.

Runs in a fresh interpreter with litellm made unimportable, so it holds in either
environment, with or without the extra installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WITHOUT_LITELLM = """
import json, sys
sys.modules["litellm"] = None  # as if the extra were not installed
from providers.errors import Fatal
from providers.registry import Providers, known
try:
    Providers().for_model("litellm:gemini/gemini-2.5-pro")
except Fatal as error:
    outcome = {"error": str(error), "provider": error.provider}
print(json.dumps({"known": list(known()), **outcome}))
"""


def test_a_litellm_model_without_the_extra_is_fatal_and_says_how_to_install_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_LITELLM],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout)
    assert "pip install 'stepwise[litellm]'" in report["error"]
    assert report["provider"] == "litellm"
    assert "litellm" not in report["known"]
    assert {"scripted", "openai", "anthropic"} <= set(report["known"])
