"""Agents the test suite runs (STEPWISE_AGENTS=tests.agents), all on the scripted model."""

import time

from tasks import Agent, ToolContext, tool


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


@tool
def explode(reason: str) -> str:
    """A tool that always raises, to show how tool errors reach the model.

    Args:
        reason: Put into the exception's message.
    """
    raise RuntimeError(f"exploded: {reason}")


@tool
def nap(seconds: float, ctx: ToolContext) -> str:
    """Sleep, then say which step slept.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return f"step {ctx.step} slept {seconds}s"


def _calls(*calls: tuple[str, dict[str, object]]) -> dict[str, object]:
    return {"tool_calls": [{"name": n, "arguments": a} for n, a in calls]}


# Two parallel tool calls, then a final answer.
parallel = Agent(
    name="parallel",
    instructions="Add things up.",
    model="scripted:parallel",
    tools=(add,),
    model_settings={
        "script": [
            _calls(("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})),
            {"text": "1+2 and 3+4 are done"},
        ]
    },
)

# A tool that raises: the model sees the error and answers anyway.
faulty = Agent(
    name="faulty",
    instructions="Try the tool.",
    model="scripted:faulty",
    tools=(explode, add),
    model_settings={
        "script": [
            _calls(("explode", {"reason": "on purpose"}), ("add", {"a": 1, "b": 1})),
            {"text": "the tool failed, but I carried on"},
        ]
    },
)

# Asks for a tool forever: max_steps ends it.
looper = Agent(
    name="looper",
    instructions="Never stop.",
    model="scripted:looper",
    tools=(add,),
    max_steps=3,
    model_settings={"script": [_calls(("add", {"a": 1, "b": 1}))], "repeat_last": True},
)

# Slow tools: for deadlines and cancellation.
sleeper = Agent(
    name="sleeper",
    instructions="Nap.",
    model="scripted:sleeper",
    tools=(nap,),
    max_steps=50,
    model_settings={"script": [_calls(("nap", {"seconds": 0.5}))], "repeat_last": True},
)

hasty = Agent(
    name="hasty",
    instructions="Nap past the deadline.",
    model="scripted:hasty",
    tools=(nap,),
    deadline=1.0,
    max_steps=50,
    model_settings={"script": [_calls(("nap", {"seconds": 0.4}))], "repeat_last": True},
)

# Sends malformed JSON and an unknown tool, then corrects itself.
sloppy = Agent(
    name="sloppy",
    instructions="Be sloppy first.",
    model="scripted:sloppy",
    tools=(add,),
    model_settings={
        "script": [
            {
                "tool_calls": [
                    {"name": "add", "arguments": '{"a": 1, "b": '},
                    {"name": "subtract", "arguments": {"a": 1}},
                ]
            },
            _calls(("add", {"a": 1, "b": 2})),
            {"text": "fixed it"},
        ]
    },
)


stubborn = Agent(
    name="stubborn",
    instructions="Never learn.",
    model="scripted:stubborn",
    tools=(add,),
    max_invalid_turns=2,
    model_settings={
        "script": [{"tool_calls": [{"name": "add", "arguments": '{"a": 1, "b": '}]}],
        "repeat_last": True,
    },
)
