"""The agents the benchmarks run (`STEPWISE_AGENTS=bench.agents`).

`bench` calls a real provider adapter against `bench.fakemodel` (its model comes
from STEPWISE_BENCH_MODEL, `openai:bench-model` by default, with OPENAI_BASE_URL
pointing at the fake server). `bench_scripted` follows the same script on the
in-process scripted model, so a step costs no model time at all: what is left is
the runtime's own overhead.
"""

from __future__ import annotations

import os

from tasks import Agent, tool

# How long a tool's result is, in characters (STEPWISE_BENCH_TOOL_CHARS): a real tool's
# (a web page, a file, a query's rows) is often several kilobytes.
TOOL_CHARS = int(os.environ.get("STEPWISE_BENCH_TOOL_CHARS", "0"))


@tool
def lookup(key: str = "") -> str:
    """Return at once: a tool whose own time is nothing.

    Args:
        key: Ignored.
    """
    value = f"value of {key or 'nothing'}"
    return value.ljust(TOOL_CHARS, ".")


def _script(rounds: str) -> list[dict[str, object]]:
    """The fake model server's script (`--tools 1,1`) for the scripted model."""
    turns: list[dict[str, object]] = [
        {"tool_calls": [{"name": "lookup", "arguments": {"key": f"k{i}"}}] * int(n)}
        for i, n in enumerate(filter(None, rounds.split(",")))
    ]
    return [*turns, {"text": "All done: the bench agent finished."}]


ROUNDS = os.environ.get("STEPWISE_BENCH_TOOLS", "1,1")

bench = Agent(
    name="bench",
    instructions="Look things up, then answer.",
    model=os.environ.get("STEPWISE_BENCH_MODEL", "openai:bench-model"),
    tools=(lookup,),
    max_steps=100,
)

bench_scripted = Agent(
    name="bench_scripted",
    instructions="Look things up, then answer.",
    model="scripted:bench",
    tools=(lookup,),
    max_steps=100,
    model_settings={"script": _script(ROUNDS)},
)
