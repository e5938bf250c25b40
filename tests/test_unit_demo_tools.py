"""The demo agent's tools: a safe calculator and the clock."""

import time
from datetime import datetime, timedelta

import pytest

from tasks import ToolContext
from tasks.demo import calculate, current_time, demo_agent, demo_model, word_count
from tasks.settings import Settings

CONTEXT = ToolContext(run_id="r", step=2, call_id="call_1_0")


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("17 * 23", "391"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 * (3 + 4) - (10 - 8) / 2", "13"),
        ("((1 + 2) * (3 + 4))", "21"),
        ("-3 + 5", "2"),
        ("-(2 + 3)", "-5"),
        ("--3", "3"),
        ("+7", "7"),
        ("2 * -3", "-6"),
        ("1.5 * 2", "3"),
        ("0.5 + 0.25", "0.75"),
        ("7 / 2", "3.5"),
        ("10 / 4", "2.5"),
        ("9 / 3", "3"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("2 ** 3 ** 2", "512"),
        ("-2 ** 2", "-4"),
    ],
)
def test_calculate_evaluates_arithmetic(expression, result):
    assert calculate(expression) == result


@pytest.mark.parametrize("expression", ["6*7", " 6 * 7", "6 * 7 ", "\t6 * 7\n"])
def test_calculate_ignores_surrounding_whitespace(expression):
    assert calculate(expression) == "42"


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("3 ** 40", str(3**40)),
        ("12345678901234567 * 10", "123456789012345670"),
        ("10 ** 20 + 1", "100000000000000000001"),
        ("2 ** 64 - 1", str(2**64 - 1)),
    ],
)
def test_calculate_keeps_integer_arithmetic_exact(expression, result):
    assert calculate(expression) == result


@pytest.mark.parametrize(
    "expression",
    [
        "x + 1",
        "__import__('os').system('true')",
        "abs(-3)",
        "(1).real",
        "'a' * 3",
        "[1, 2]",
        "1 if 1 else 2",
        "1 < 2",
        "True + 1",
        "7 // 2",
        "7 % 2",
        "1 << 3",
        "~1",
        "not 1",
        "lambda: 1",
        "3j * 2",
    ],
)
def test_calculate_rejects_anything_but_plain_arithmetic(expression):
    with pytest.raises(ValueError, match="not plain arithmetic"):
        calculate(expression)


@pytest.mark.parametrize("expression", ["", "1 +", "(1 + 2", "1 + 2)"])
def test_calculate_rejects_malformed_expressions(expression):
    with pytest.raises(SyntaxError):
        calculate(expression)


@pytest.mark.parametrize(
    "expression",
    ["2 ** 1000", "10 ** 101", "2 ** -101", "9 ** 9 ** 9", "9 ** 9 ** 9 ** 9", "2 ** (50 * 3)"],
)
def test_calculate_rejects_huge_exponents_quickly(expression):
    started = time.monotonic()
    with pytest.raises(ValueError, match="exponent too large"):
        calculate(expression)
    assert time.monotonic() - started < 1


def test_calculate_results_that_overflow_are_an_error_not_a_hang():
    started = time.monotonic()
    with pytest.raises((ValueError, OverflowError)):
        calculate("(10 ** 100) ** 100")
    assert time.monotonic() - started < 1


def test_calculate_division_by_zero_raises():
    with pytest.raises(ZeroDivisionError):
        calculate("1 / 0")


def test_calculate_through_the_tool_interface():
    assert calculate.invoke(calculate.validate('{"expression": "17 * 23"}'), CONTEXT) == "391"
    assert calculate.spec().parameters["required"] == ["expression"]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_current_time_in_a_known_zone(zone):
    moment = datetime.fromisoformat(current_time(zone))
    assert moment.tzinfo is not None
    assert abs(moment - datetime.now(moment.tzinfo)) < timedelta(minutes=1)
    assert moment.microsecond == 0


def test_current_time_defaults_to_utc():
    moment = datetime.fromisoformat(current_time.invoke(current_time.validate("{}"), CONTEXT))
    assert moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "not a zone", "", "../../etc/passwd", "/etc/localtime", "UTC\x00"]
)
def test_current_time_rejects_unknown_zones(zone):
    with pytest.raises(ValueError, match="unknown time zone"):
        current_time(zone)


@pytest.mark.parametrize(("text", "count"), [("", 0), ("one", 1), ("two  words\n", 2)])
def test_word_count(text, count):
    assert word_count.invoke({"text": text}, CONTEXT) == str(count)


def test_demo_agent_uses_the_scripted_model_without_keys():
    settings = Settings()
    assert demo_model(settings) == "scripted:demo"
    agent = demo_agent(settings)
    assert agent.name == "demo"
    assert {t.name for t in agent.tools} == {"calculate", "current_time", "word_count"}
