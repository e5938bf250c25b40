"""The @tool decorator: JSON schema from type hints, descriptions from docstrings, validation."""

import asyncio
import enum
import json
from typing import Any, Literal, Optional

import pytest
from pydantic import BaseModel

from tasks import ConfigError, Tool, ToolContext, tool
from tasks.tools import ToolArgumentsError

CONTEXT = ToolContext(run_id="run-1", step=3, call_id="call_7")


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int = 0


def _one_parameter_tool(annotation: Any) -> Tool:
    def probe(value):  # type: ignore[no-untyped-def]
        """Probe a type."""
        return value

    probe.__annotations__ = {"value": annotation, "return": Any}
    return tool(probe)


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (list[str], {"type": "array", "items": {"type": "string"}}),
        (dict, {"type": "object"}),
        (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),  # noqa: UP045
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Literal["fast", "slow"], {"type": "string", "enum": ["fast", "slow"]}),
    ],
    ids=["str", "int", "float", "bool", "list[str]", "dict", "Optional", "union-None", "Literal"],
)
def test_tool_schema_maps_each_python_type_to_its_json_schema(annotation, expected):
    schema = _one_parameter_tool(annotation).spec().parameters
    prop = schema["properties"]["value"]
    assert {key: prop[key] for key in expected} == expected
    assert schema["required"] == ["value"]


def test_tool_schema_describes_an_enum_parameter_by_its_values():
    schema = _one_parameter_tool(Colour).spec().parameters
    ref = schema["properties"]["value"]["$ref"]
    definition = schema["$defs"][ref.rsplit("/", 1)[1]]
    assert definition["enum"] == ["red", "blue"]
    assert definition["type"] == "string"


def test_tool_schema_describes_a_pydantic_model_parameter_as_a_nested_object():
    schema = _one_parameter_tool(Point).spec().parameters
    ref = schema["properties"]["value"]["$ref"]
    definition = schema["$defs"][ref.rsplit("/", 1)[1]]
    assert definition["type"] == "object"
    assert set(definition["properties"]) == {"x", "y"}
    assert definition["required"] == ["x"]


def test_tool_schema_is_an_object_schema_without_a_title():
    schema = _one_parameter_tool(str).spec().parameters
    assert schema["type"] == "object"
    assert "title" not in schema


def test_tool_schema_marks_parameters_without_defaults_required():
    @tool
    def search(query: str, limit: int = 10, exact: bool = False, lang: str | None = None) -> str:
        """Search the catalogue."""
        return query

    schema = search.spec().parameters
    assert schema["required"] == ["query"]
    assert set(schema["properties"]) == {"query", "limit", "exact", "lang"}
    assert schema["properties"]["limit"]["default"] == 10
    assert schema["properties"]["exact"]["default"] is False
    assert schema["properties"]["lang"]["default"] is None


def test_tool_schema_takes_parameter_descriptions_from_the_docstring_args_section():
    @tool
    def convert(amount: float, currency: str, rounding: int = 2) -> str:
        """Convert an amount of money.

        Args:
            amount: How much money, in the source currency.
            currency: The ISO 4217 code to convert to.
        """
        return ""

    properties = convert.spec().parameters["properties"]
    assert properties["amount"]["description"] == "How much money, in the source currency."
    assert properties["currency"]["description"] == "The ISO 4217 code to convert to."
    assert "description" not in properties["rounding"]


def test_tool_description_is_the_docstring_summary_without_the_args_section():
    @tool
    def convert(amount: float) -> str:
        """Convert an amount of money.

        Args:
            amount: How much money.
        """
        return ""

    assert convert.description == "Convert an amount of money."
    assert convert.spec().description == "Convert an amount of money."
    assert convert.spec().name == "convert"


def test_tool_description_keeps_the_long_description_after_the_summary():
    @tool
    def convert(amount: float) -> str:
        """Convert an amount of money.

        Uses yesterday's closing rates.

        Args:
            amount: How much money.
        """
        return ""

    assert convert.description == "Convert an amount of money.\n\nUses yesterday's closing rates."


def test_tool_context_parameter_is_left_out_of_the_schema():
    @tool
    def where(label: str, ctx: ToolContext) -> str:
        """Say where the call runs."""
        return label

    schema = where.spec().parameters
    assert set(schema["properties"]) == {"label"}
    assert schema["required"] == ["label"]


def test_tool_context_is_injected_when_the_tool_is_invoked():
    @tool
    def where(label: str, ctx: ToolContext) -> str:
        """Say where the call runs."""
        return f"{label}: {ctx.run_id} step {ctx.step} call {ctx.call_id}"

    arguments = where.validate('{"label": "here"}')
    assert where.invoke(arguments, CONTEXT) == "here: run-1 step 3 call call_7"


def test_tool_context_cannot_be_supplied_by_the_model():
    @tool
    def where(label: str, ctx: ToolContext) -> str:
        """Say where the call runs."""
        return label

    with pytest.raises(ToolArgumentsError, match="ctx"):
        where.validate('{"label": "here", "ctx": {"run_id": "x", "step": 1, "call_id": "y"}}')


def test_tool_schema_forbids_additional_properties():
    @tool
    def greet(name: str) -> str:
        """Greet someone."""
        return f"hello {name}"

    assert greet.spec().parameters["additionalProperties"] is False
    with pytest.raises(ToolArgumentsError, match="shout"):
        greet.validate('{"name": "Ada", "shout": true}')


def test_tool_without_a_type_hint_is_a_config_error_at_decoration():
    def untyped(name) -> str:  # type: ignore[no-untyped-def]
        """Greet someone."""
        return name  # type: ignore[no-any-return]

    with pytest.raises(ConfigError, match=r"'name' needs a type hint"):
        tool(untyped)


@pytest.mark.parametrize(
    "signature",
    ["*args: int", "**kwargs: int", "name: str, *rest: str"],
    ids=["*args", "**kwargs", "positional-rest"],
)
def test_tool_with_star_args_or_star_star_kwargs_is_a_config_error_at_decoration(signature):
    namespace: dict[str, Any] = {}
    exec(f"def variadic({signature}) -> str:\n    '''Take anything.'''\n    return ''", namespace)
    with pytest.raises(ConfigError, match=r"\*args and \*\*kwargs"):
        tool(namespace["variadic"])


@pytest.mark.parametrize("docstring", [None, "", "   \n  "], ids=["none", "empty", "blank"])
def test_tool_without_a_docstring_is_a_config_error_at_decoration(docstring):
    def silent(name: str) -> str:
        return name

    silent.__doc__ = docstring
    with pytest.raises(ConfigError, match="needs a docstring"):
        tool(silent)


def test_tool_decorator_with_options_keeps_the_options():
    @tool(name="wire_money", timeout=2.5, queue="payments", requires_approval=True)
    def pay(amount: float) -> str:
        """Pay an amount."""
        return "paid"

    assert isinstance(pay, Tool)
    assert (pay.name, pay.timeout, pay.queue, pay.requires_approval) == (
        "wire_money",
        2.5,
        "payments",
        True,
    )
    assert pay.spec().name == "wire_money"


def test_tool_decorator_without_options_has_the_defaults():
    @tool
    def pay(amount: float) -> str:
        """Pay an amount."""
        return "paid"

    assert (pay.name, pay.timeout, pay.queue, pay.requires_approval) == ("pay", None, None, False)


def test_tool_stays_callable_as_the_plain_function():
    @tool
    def double(n: int) -> int:
        """Double a number."""
        return n * 2

    assert double(21) == 42


@tool
def _schedule(
    title: str, minutes: int, colour: Colour = Colour.RED, at: Point | None = None
) -> str:
    """Schedule a meeting.

    Args:
        title: What the meeting is about.
        minutes: How long it lasts.
    """
    return title


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ('{"title": "standup", "minutes": ', ["not valid JSON"]),
        ("not json at all", ["not valid JSON"]),
        ("[1, 2]", ["must be a JSON object"]),
        ('"a string"', ["must be a JSON object"]),
        ("42", ["must be a JSON object"]),
        ("null", ["must be a JSON object"]),
        ('{"title": "standup"}', ["minutes", "Field required"]),
        ("{}", ["title", "minutes", "Field required"]),
        ('{"title": "standup", "minutes": "soon"}', ["minutes", "integer"]),
        ('{"title": "standup", "minutes": 1.5}', ["minutes", "integer"]),
        ('{"title": ["a"], "minutes": 5}', ["title", "string"]),
        ('{"title": "standup", "minutes": 5, "colour": "green"}', ["colour"]),
        ('{"title": "standup", "minutes": 5, "at": {"y": 1}}', ["at.x", "Field required"]),
        ('{"title": "standup", "minutes": 5, "room": "B"}', ["room", "Extra inputs"]),
    ],
    ids=[
        "truncated-json",
        "not-json",
        "array",
        "string",
        "number",
        "null",
        "missing-one",
        "missing-all",
        "text-for-int",
        "fraction-for-int",
        "list-for-str",
        "unknown-enum-value",
        "nested-missing",
        "extra-field",
    ],
)
def test_tool_validate_rejects_bad_arguments_with_a_message_naming_the_problem(raw, fragments):
    with pytest.raises(ToolArgumentsError) as caught:
        _schedule.validate(raw)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message


def test_tool_arguments_error_is_a_value_error():
    assert issubclass(ToolArgumentsError, ValueError)


def test_tool_validate_returns_typed_values_with_defaults_filled_in():
    arguments = _schedule.validate(
        '{"title": "standup", "minutes": 15, "colour": "blue", "at": {"x": 3}}'
    )
    assert arguments == {
        "title": "standup",
        "minutes": 15,
        "colour": Colour.BLUE,
        "at": Point(x=3, y=0),
    }
    assert _schedule.validate('{"title": "t", "minutes": 1}')["colour"] is Colour.RED


@pytest.mark.parametrize("raw", ["", "{}"], ids=["empty-string", "empty-object"])
def test_tool_validate_treats_no_arguments_as_an_empty_object(raw):
    @tool
    def now(timezone: str = "UTC") -> str:
        """The time."""
        return timezone

    assert now.validate(raw) == {"timezone": "UTC"}


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("plain text", "plain text"),
        ("", ""),
        (42, "42"),
        (2.5, "2.5"),
        (True, "true"),
        (None, "null"),
        ([1, "two", None], '[1, "two", null]'),
        ({"a": 1, "b": [True]}, '{"a": 1, "b": [true]}'),
    ],
    ids=["str", "empty-str", "int", "float", "bool", "None", "list", "dict"],
)
def test_tool_invoke_renders_non_string_results_as_json(value, rendered):
    @tool
    def give() -> Any:
        """Return a fixed value."""
        return value

    assert give.invoke({}, CONTEXT) == rendered


def test_tool_invoke_renders_a_pydantic_model_result_as_json():
    @tool
    def locate() -> Point:
        """Where the thing is."""
        return Point(x=1, y=2)

    assert json.loads(locate.invoke({}, CONTEXT)) == {"x": 1, "y": 2}


def test_tool_invoke_passes_validated_arguments_to_the_function():
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    assert add.invoke(add.validate('{"a": 2, "b": 40}'), CONTEXT) == "42"


def test_tool_invoke_lets_the_tools_own_exception_through():
    @tool
    def explode(reason: str) -> str:
        """Always fail."""
        raise RuntimeError(reason)

    with pytest.raises(RuntimeError, match="on purpose"):
        explode.invoke({"reason": "on purpose"}, CONTEXT)


def test_async_tool_is_awaited_at_invoke():
    @tool
    async def slow_add(a: int, b: int, ctx: ToolContext) -> dict[str, Any]:
        """Add two integers, slowly."""
        await asyncio.sleep(0)
        return {"sum": a + b, "step": ctx.step}

    assert set(slow_add.spec().parameters["properties"]) == {"a", "b"}
    rendered = slow_add.invoke(slow_add.validate('{"a": 1, "b": 2}'), CONTEXT)
    assert json.loads(rendered) == {"sum": 3, "step": 3}


def test_async_tool_returning_text_is_passed_through():
    @tool
    async def echo(text: str) -> str:
        """Echo the text."""
        return text

    assert echo.invoke({"text": "hi"}, CONTEXT) == "hi"
