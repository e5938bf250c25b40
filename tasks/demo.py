"""The built-in `demo` agent and its tools: arithmetic, the clock and word counts."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from providers.registry import known
from tasks.agents import Agent
from tasks.settings import Settings
from tasks.tools import tool

_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / ** and parentheses.

    Args:
        expression: The expression, for example "17 * 23".
    """
    value = _evaluate(ast.parse(expression.strip(), mode="eval").body)
    return str(int(value) if isinstance(value, float) and value.is_integer() else value)


def _evaluate(node: ast.AST) -> int | float:
    """Integers stay exact; only division makes a float."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ValueError("not plain arithmetic: a boolean")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 100 or abs(left) > 10**100):
            raise ValueError("exponent too large")
        value: int | float = _OPERATORS[type(node.op)](left, right)
        return value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        result: int | float = _OPERATORS[type(node.op)](_evaluate(node.operand))
        return result
    raise ValueError(f"not plain arithmetic: {ast.unparse(node)}")


@tool
def current_time(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone.

    Args:
        timezone: For example "Europe/Paris"; UTC when omitted.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    return datetime.now(zone).isoformat(timespec="seconds")


@tool
def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: The text to count.
    """
    return len(text.split())


def demo_model(settings: Settings) -> str:
    """A real model when a key is set and its provider is built in, else the scripted one."""
    if settings.openai_key_set and "openai" in known():
        return "openai:gpt-4.1-mini"
    if settings.anthropic_key_set and "anthropic" in known():
        return "anthropic:claude-sonnet-4-5"
    return "scripted:demo"


def demo_agent(settings: Settings) -> Agent:
    """The built-in demo agent."""
    return Agent(
        name="demo",
        instructions=(
            "You are a helpful assistant. Use the calculate tool for arithmetic and the "
            "current_time tool for the time; call several tools at once when that helps."
        ),
        model=demo_model(settings),
        tools=(calculate, current_time, word_count),
        max_steps=6,
        deadline=120.0,
    )
