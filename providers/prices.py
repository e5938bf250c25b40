"""What a model call costs: a table of prices per model, which users extend.

The table shipped in `prices.toml` holds list prices; a file of the same shape
named by `STEPWISE_PRICES` adds models or overrides them. A model with no price
has no cost (None), never a made-up one.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, ValidationError

from providers.types import Usage

# A dated or moving alias of a model: "gpt-4o-2024-08-06", "claude-sonnet-4-20250514".
_DATED = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens; cached reads and cache writes default to `input`."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Usage) -> float:
        """The dollars `usage` costs at this price."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        fresh = usage.input_tokens - cached - written
        dollars = (
            fresh * self.input
            + cached * (self.input if self.cached_input is None else self.cached_input)
            + written * (self.input if self.cache_write is None else self.cache_write)
            + usage.output_tokens * self.output
        )
        return dollars / 1_000_000


class Prices:
    """A price table keyed by model string (`"openai:gpt-4.1"`)."""

    def __init__(self, table: Mapping[str, Price]) -> None:
        self.table = MappingProxyType(dict(table))

    @classmethod
    def load(cls, path: str | None = None) -> Prices:
        """The shipped table, with the entries of the TOML file at `path` over it.

        Raises `ValueError` naming the file when it is missing or malformed.
        """
        shipped = resources.files("providers").joinpath("prices.toml").read_text("utf-8")
        table = _parse(shipped, "providers/prices.toml")
        if path:
            try:
                text = Path(path).read_text("utf-8")
            except OSError as error:
                raise ValueError(f"price table {path}: {error.strerror or error}") from None
            table.update(_parse(text, path))
        return cls(table)

    def price(self, model: str) -> Price | None:
        """The price of `model`, or None when the table does not know it."""
        for key in _keys(model):
            if key in self.table:
                return self.table[key]
        return None

    def cost(self, usage: Usage, *models: str) -> float | None:
        """What `usage` cost, priced as the first of `models` the table knows."""
        for model in models:
            price = self.price(model)
            if price is not None:
                return price.cost(usage)
        return None


def _keys(model: str) -> Iterator[str]:
    """The table keys that may price `model`, the most specific first."""
    provider, _, name = model.partition(":")
    names = [(provider, name)]
    if provider == "openai-responses":  # the same models, the same prices
        names.append(("openai", name))
    if provider == "litellm" and "/" in name:  # "litellm:anthropic/claude-…"
        inner, _, rest = name.partition("/")
        names.append((inner, rest))
    for prefix, bare in names:
        yield f"{prefix}:{bare}"
        undated = _DATED.sub("", bare)
        if undated != bare:
            yield f"{prefix}:{undated}"
    for prefix, _ in names:
        yield f"{prefix}:*"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: NonNegativeFloat
    output: NonNegativeFloat
    cached_input: NonNegativeFloat | None = None
    cache_write: NonNegativeFloat | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, _Entry] = {}


def _parse(text: str, where: str) -> dict[str, Price]:
    try:
        data = _File.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"price table {where} is not valid TOML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"price table {where}: {problems}") from None
    for key in data.models:
        provider, sep, name = key.partition(":")
        if not (provider and sep and name):
            raise ValueError(f"price table {where}: {key!r} must look like 'provider:model'")
    return {
        key: Price(e.input, e.output, e.cached_input, e.cache_write)
        for key, e in data.models.items()
    }
