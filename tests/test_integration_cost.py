"""Every model step records its tokens and a cost from the price table; the run totals them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks import client
from tasks.cli import cli


@pytest.fixture
def priced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user price table that gives the scripted model a price (it ships at zero)."""
    table = tmp_path / "prices.toml"
    table.write_text('[models."scripted:*"]\ninput = 1.0\noutput = 2.0\n')
    monkeypatch.setenv("STEPWISE_PRICES", str(table))
    return table


def test_each_model_step_is_priced_from_the_users_table_and_the_run_totals_them(
    priced: Path, anywhere: dict[str, str]
) -> None:
    run_id = client.start_run("demo", "What is 17 * 23?")

    run = client.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    models = [s for s in client.get_steps(run_id) if s.kind == "model"]
    assert len(models) == 2
    for step in models:
        assert step.usage is not None and step.usage.input_tokens > 0
        expected = (step.usage.input_tokens * 1.0 + step.usage.output_tokens * 2.0) / 1e6
        assert step.cost_usd == pytest.approx(expected)
    assert run.cost_usd == pytest.approx(sum(s.cost_usd or 0 for s in models))
    assert run.usage.input_tokens == sum(s.usage.input_tokens for s in models if s.usage)


def test_show_prints_the_runs_tokens_and_cost_and_each_model_steps(
    priced: Path, embedded: dict[str, str]
) -> None:
    run_id = client.start_run("demo", "What is 17 * 23?")
    run = client.wait(run_id, timeout=30)
    assert run.cost_usd is not None

    shown = CliRunner().invoke(cli, ["show", run_id])

    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    u = run.usage
    assert f"tokens   {u.input_tokens} in · {u.output_tokens} out · 0 cached · " in shown.output
    assert f"cost     ${run.cost_usd:.6f}" in lines
    model_lines = [line for line in lines if " model scripted:demo " in line]
    assert len(model_lines) == 2
    assert all(line.rstrip().endswith(tuple("0123456789")) for line in model_lines)
    assert all(" · $0.0" in line for line in model_lines)
