"""The visibility-timeout rule: no step may run, or wait to retry, longer than Redis waits."""

from __future__ import annotations

from tasks import Agent, tool
from tasks.timing import LEASE_MARGIN, MAX_COUNTDOWN, problems, tool_lease, tool_timeout


@tool
def quick() -> str:
    """Return at once."""
    return "done"


@tool(timeout=900)
def slow() -> str:
    """Take up to fifteen minutes."""
    return "done"


def agent(**options: object) -> Agent:
    return Agent(name="a", instructions=".", model="scripted:a", **options)  # type: ignore[arg-type]


def test_a_tool_without_a_timeout_of_its_own_gets_the_agents_step_timeout() -> None:
    assert tool_timeout(quick, agent(step_timeout=120)) == 120
    assert tool_timeout(slow, agent(step_timeout=120)) == 900
    assert tool_lease(slow, agent()) == 900 + LEASE_MARGIN
    assert tool_lease(quick, agent(step_timeout=2)) == 4  # a short tool, a short margin


def test_the_defaults_fit_the_default_visibility_timeout() -> None:
    assert problems([agent(tools=(quick,))], 3600) == []


def test_a_step_timeout_at_or_above_the_visibility_timeout_is_named() -> None:
    assert problems([agent(step_timeout=600, tools=(quick,))], 600) == [
        "agent 'a': step_timeout 600 s is not below the visibility timeout (600 s)",
        "agent 'a', tool 'quick': its timeout 600 s plus 30 s to record the result "
        "is not below the visibility timeout (600 s)",
    ]


def test_a_tool_whose_timeout_and_margin_reach_the_visibility_timeout_is_named() -> None:
    found = problems([agent(tools=(quick, slow))], 920)
    assert found == [
        "agent 'a', tool 'slow': its timeout 900 s plus 30 s to record the result "
        "is not below the visibility timeout (920 s)"
    ]


def test_a_visibility_timeout_below_the_longest_retry_countdown_is_named() -> None:
    found = problems([], MAX_COUNTDOWN)
    assert found == [
        f"the longest retry countdown ({MAX_COUNTDOWN:g} s) is not below the visibility "
        f"timeout ({MAX_COUNTDOWN:g} s)"
    ]
