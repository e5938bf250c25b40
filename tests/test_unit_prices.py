"""The price table: which entry prices a model, what a call costs, and user overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.prices import Price, Prices
from providers.types import Usage
from tasks.errors import ConfigError
from tasks.runtime import runtime_for
from tasks.settings import Settings

TABLE = Prices(
    {
        "openai:gpt-4o": Price(2.5, 10.0, cached_input=1.25),
        "openai:gpt-4o-mini": Price(0.15, 0.6),
        "anthropic:claude-sonnet-4": Price(3.0, 15.0, cached_input=0.3, cache_write=3.75),
        "gemini:gemini-2.5-pro": Price(1.25, 10.0),
        "local:*": Price(0.0, 0.0),
    }
)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("openai:gpt-4o", "openai:gpt-4o"),
        ("openai:gpt-4o-mini", "openai:gpt-4o-mini"),
        ("openai:gpt-4o-2024-08-06", "openai:gpt-4o"),
        ("openai:gpt-4o-mini-2024-07-18", "openai:gpt-4o-mini"),
        ("anthropic:claude-sonnet-4-20250514", "anthropic:claude-sonnet-4"),
        ("anthropic:claude-sonnet-4-latest", "anthropic:claude-sonnet-4"),
        ("openai-responses:gpt-4o", "openai:gpt-4o"),
        ("litellm:openai/gpt-4o-2024-08-06", "openai:gpt-4o"),
        ("litellm:gemini/gemini-2.5-pro", "gemini:gemini-2.5-pro"),
        ("local:anything-at-all", "local:*"),
    ],
)
def test_a_model_takes_its_own_entry_its_undated_entry_or_its_providers_wildcard(
    model: str, key: str
) -> None:
    assert TABLE.price(model) is TABLE.table[key]


@pytest.mark.parametrize(
    "model",
    [
        "openai:gpt-4o-turbo",  # a different model, not a dated gpt-4o
        "openai:gpt-4",
        "anthropic:claude-opus-4",
        "litellm:mistral/mistral-large",
        "scripted:demo",
    ],
)
def test_a_model_the_table_does_not_know_has_no_price(model: str) -> None:
    assert TABLE.price(model) is None
    assert TABLE.cost(Usage(1000, 1000), model) is None


@pytest.mark.parametrize(
    ("price", "usage", "dollars"),
    [
        (Price(2.0, 8.0), Usage(1_000_000, 0), 2.0),
        (Price(2.0, 8.0), Usage(0, 1_000_000), 8.0),
        (Price(2.0, 8.0), Usage(500_000, 250_000), 3.0),
        # Cached input at its own price; the rest of the input at the full price.
        (Price(2.0, 8.0, cached_input=0.5), Usage(1_000_000, 0, cached_tokens=600_000), 1.1),
        # Without a cached price, cached tokens cost what input costs.
        (Price(2.0, 8.0), Usage(1_000_000, 0, cached_tokens=600_000), 2.0),
        # Anthropic-style: reads, writes and fresh input, each at its price.
        (
            Price(3.0, 15.0, cached_input=0.3, cache_write=3.75),
            Usage(1_000_000, 100_000, cached_tokens=500_000, cache_write_tokens=200_000),
            0.15 + 0.75 + 0.9 + 1.5,
        ),
        # Reasoning tokens are part of the output count: not charged twice.
        (Price(2.0, 8.0), Usage(0, 1_000_000, reasoning_tokens=900_000), 8.0),
        # A provider that reports more cached than input tokens is not charged below zero.
        (Price(2.0, 8.0, cached_input=0.5), Usage(100, 0, cached_tokens=400), 0.00005),
    ],
)
def test_a_call_costs_each_kind_of_token_at_its_price(
    price: Price, usage: Usage, dollars: float
) -> None:
    assert price.cost(usage) == pytest.approx(dollars)


def test_cost_prices_the_first_model_the_table_knows() -> None:
    usage = Usage(1_000_000, 0)
    assert TABLE.cost(usage, "openai:unknown-snapshot", "openai:gpt-4o-mini") == pytest.approx(0.15)


def test_the_shipped_table_prices_the_well_known_models_and_the_scripted_stand_in() -> None:
    prices = Prices.load()
    for model in (
        "openai:gpt-4.1-mini",
        "openai:gpt-4o-2024-08-06",
        "anthropic:claude-sonnet-4-5",
        "anthropic:claude-sonnet-4-20250514",
    ):
        assert prices.price(model) is not None, model
    assert prices.cost(Usage(10_000, 10_000), "scripted:demo") == 0.0


def test_a_user_file_adds_models_and_overrides_shipped_prices(tmp_path: Path) -> None:
    mine = tmp_path / "prices.toml"
    mine.write_text(
        '[models."openai:gpt-4.1-mini"]\ninput = 1.0\noutput = 2.0\n\n'
        '[models."openai:my-finetune"]\ninput = 3.0\noutput = 6.0\ncached_input = 1.5\n'
    )
    prices = Prices.load(str(mine))
    assert prices.price("openai:gpt-4.1-mini") == Price(1.0, 2.0)
    assert prices.price("openai:my-finetune") == Price(3.0, 6.0, cached_input=1.5)
    assert prices.price("anthropic:claude-sonnet-4-5") is not None  # the rest stays


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[models", "is not valid TOML"),
        ('[models."openai:x"]\ninput = 1.0\n', "models.openai:x.output: Field required"),
        ('[models."openai:x"]\ninput = -1.0\noutput = 1.0\n', "greater than or equal to 0"),
        ('[models."openai:x"]\ninput = 1.0\noutput = 1.0\ncahced_input = 0.5\n', "cahced_input"),
        ('[models."gpt-4o"]\ninput = 1.0\noutput = 1.0\n', "must look like 'provider:model'"),
        ('[prices."openai:x"]\ninput = 1.0\noutput = 1.0\n', "prices: Extra inputs"),
    ],
)
def test_a_malformed_user_file_is_a_clear_error_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    mine = tmp_path / "prices.toml"
    mine.write_text(text)
    with pytest.raises(ValueError, match="price table") as caught:
        Prices.load(str(mine))
    assert str(mine) in str(caught.value)
    assert problem in str(caught.value)


def test_a_missing_user_file_is_a_configuration_error_when_the_runtime_starts(
    tmp_path: Path,
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 's.db'}", prices_file=str(tmp_path / "nope.toml")
    )
    with pytest.raises(ConfigError, match=r"STEPWISE_PRICES: price table .*nope.toml"):
        runtime_for(settings)
