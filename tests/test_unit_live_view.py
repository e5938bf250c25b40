"""`stepwise follow` renders a run's events as lines a person reads."""

from __future__ import annotations

import io
from typing import Any

from tasks.render import LiveView

RUN = "5f0c0b7e-8a43-4a4e-9b83-0d5c1f3e2a10"
USAGE = {"input_tokens": 120, "output_tokens": 30}
ORDER = '{"order_id": "A-1001"}'


def event(seq: int | None, kind: str, data: dict[str, Any], step: int | None = None) -> dict:
    second = seq if seq is not None else 0
    return {
        "run_id": RUN,
        "seq": seq,
        "type": kind,
        "step": step,
        "data": data,
        "at": f"2026-11-21T10:00:{second:02d}.000000+00:00",
    }


def render(*events: dict[str, Any]) -> str:
    out = io.StringIO()
    view = LiveView(out)
    for e in events:
        view.show(e)
    return out.getvalue()


def delta(text: str, step: int, attempt: int = 1) -> dict[str, Any]:
    return event(None, "model.delta", {"kind": "text", "text": text, "attempt": attempt}, step)


def test_a_whole_run_shows_steps_tool_calls_streamed_text_tokens_cost_and_elapsed_time() -> None:
    text = render(
        event(1, "run.queued", {"agent": "support"}),
        event(2, "run.started", {"model": "openai:gpt-4.1-mini"}),
        event(3, "model.started", {"attempt": 1}, 1),
        event(
            4,
            "model.completed",
            {
                "finish_reason": "tool_calls",
                "tool_calls": [{"name": "lookup_order", "arguments": ORDER}],
                "usage": USAGE,
                "cost_usd": 0.000123,
            },
            1,
        ),
        event(
            5, "tool.started", {"name": "lookup_order", "arguments": '{"order_id": "A-1001"}'}, 2
        ),
        event(6, "tool.completed", {"name": "lookup_order", "result": "shipped"}, 2),
        event(7, "model.started", {"attempt": 1}, 3),
        delta("Order A-1001 ", 3),
        delta("has shipped.", 3),
        event(
            8,
            "model.completed",
            {"finish_reason": "stop", "usage": USAGE, "cost_usd": 0.0002},
            3,
        ),
        event(
            12,
            "run.succeeded",
            {"status": "succeeded", "usage": USAGE, "cost_usd": 0.000323, "result": "Shipped."},
        ),
    )

    assert f"run {RUN} · agent support · queued" in text
    assert "started · model openai:gpt-4.1-mini" in text
    assert "▸ step 1 · model" in text
    assert '→ lookup_order({"order_id": "A-1001"})' in text
    assert "120 in / 30 out tokens · $0.000123" in text
    assert '▸ step 2 · tool lookup_order({"order_id": "A-1001"})' in text
    assert "✓ lookup_order → shipped" in text
    assert "Order A-1001 has shipped.\n" in text
    assert "✔ succeeded in 11.00 s · 120 in / 30 out tokens · $0.000323" in text
    assert text.rstrip().endswith("Shipped.")


def test_a_retracted_step_says_that_its_streamed_text_no_longer_counts() -> None:
    text = render(
        event(3, "model.started", {"attempt": 1}, 1),
        delta("half an ans", 1),
        event(4, "model.retracted", {"attempt": 1, "reason": "the stream broke"}, 1),
        event(5, "model.started", {"attempt": 2}, 1),
    )

    assert "half an ans\n" in text
    assert "↺ step 1: discard the text streamed above (the stream broke)" in text
    assert "▸ step 1 · model (attempt 2)" in text


def test_failures_unknown_outcomes_resumes_and_unpriced_models_are_spelled_out() -> None:
    text = render(
        event(2, "run.resumed", {"quiet_for": 75.2, "resumes": 1, "steps": [2]}),
        event(3, "tool.failed", {"name": "charge", "error": "card declined"}, 2),
        event(4, "tool.outcome_unknown", {"name": "charge", "effect_id": "e-1"}, 3),
        event(
            5,
            "run.failed",
            {"status": "failed", "usage": USAGE, "cost_usd": None, "reason": "model failed"},
        ),
    )

    assert "↻ resumed after 75 s without progress" in text
    assert "✗ charge failed: card declined" in text
    assert "? charge: outcome unknown (its worker died mid-call)" in text
    assert "✘ failed in 3.00 s · 120 in / 30 out tokens\n" in text
    assert "reason: model failed" in text
