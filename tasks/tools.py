"""Tools: typed Python functions whose JSON schema comes from their type hints."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args, get_type_hints, overload

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_jsonable_python

from providers.types import ToolSpec
from tasks.errors import ConfigError


@dataclass(frozen=True)
class ToolContext:
    """What a tool may learn about the call it serves; declare a parameter of this type.

    `effect_id` is committed before the tool runs and stays the same if the call
    runs again: pass it to outside systems as an idempotency key.
    """

    run_id: str
    step: int
    call_id: str
    effect_id: str = ""
    attempt: int = 1


class ToolArgumentsError(ValueError):
    """The model's arguments are not valid JSON or do not fit the tool's schema."""


class Tool:
    """A function the model can call, with the schema of its arguments."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        requires_approval: bool = False,
        idempotent: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"tool {self.name!r}: timeout must be positive seconds")
        self.timeout = timeout
        self.idempotent = idempotent
        self.queue = queue
        self.requires_approval = requires_approval
        doc = docstring_parser.parse(inspect.getdoc(fn) or "")
        summary = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
        self.description = description or summary
        if not self.description:
            raise ConfigError(f"tool {self.name!r} needs a docstring: it is the model's guide")
        self._context_param, self.arguments_model = _arguments_model(self.name, fn, doc)

    @functools.cached_property
    def _spec(self) -> ToolSpec:
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        return ToolSpec(self.name, self.description, schema)

    def spec(self) -> ToolSpec:
        """The tool as a model sees it (built once: every model step sends it)."""
        return self._spec

    def validate(self, raw_arguments: str) -> dict[str, Any]:
        """Parse and check the model's raw JSON arguments; `ToolArgumentsError` if they are bad."""
        try:
            data = json.loads(raw_arguments or "{}")
        except json.JSONDecodeError as error:
            raise ToolArgumentsError(f"arguments are not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise ToolArgumentsError("arguments must be a JSON object")
        try:
            model = self.arguments_model.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or 'arguments'}: {e['msg']}"
                for e in error.errors()
            )
            raise ToolArgumentsError(f"arguments do not fit the schema: {problems}") from None
        return {field: getattr(model, field) for field in type(model).model_fields}

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> str:
        """Call the function and render its return value as text for the model."""
        kwargs = dict(arguments)
        if self._context_param:
            kwargs[self._context_param] = context
        result = self.fn(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return (
            result
            if isinstance(result, str)
            else json.dumps(to_jsonable_python(result, fallback=str))
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _arguments_model(
    name: str, fn: Callable[..., Any], doc: docstring_parser.Docstring
) -> tuple[str | None, type[BaseModel]]:
    hints = get_type_hints(fn, include_extras=True)
    described = {p.arg_name: p.description for p in doc.params}
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {name!r}: *args and **kwargs cannot be described to a model")
        if param.name not in hints:
            raise ConfigError(f"tool {name!r}: parameter {param.name!r} needs a type hint")
        if param.name.startswith("model_"):
            raise ConfigError(f"tool {name!r}: parameter names may not start with 'model_'")
        if ToolContext in (hints[param.name], *get_args(hints[param.name])):
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (
            hints[param.name],
            Field(default, description=described.get(param.name)),
        )
    model = create_model(  # type: ignore[call-overload]
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return context_param, model


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    requires_approval: bool = False,
    idempotent: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    requires_approval: bool = False,
    idempotent: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a tool of a typed function with a docstring: `@tool` or `@tool(name=...)`.

    `timeout` bounds one call (the agent's `step_timeout` otherwise). `idempotent`
    says that running the call again with the same `ctx.effect_id` is safe, so a
    call whose worker died is run again instead of ending as `outcome_unknown`.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            timeout=timeout,
            queue=queue,
            requires_approval=requires_approval,
            idempotent=idempotent,
        )

    return wrap(fn) if fn is not None else wrap
