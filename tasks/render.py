"""Turning a run's events into lines a person reads in a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TextIO

_MARK = {"succeeded": "✔", "failed": "✘", "cancelled": "⊘", "timed_out": "⌛"}


def _clip(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _spent(data: dict[str, Any]) -> str:
    """Tokens, and dollars when the price table knew the model."""
    usage = data.get("usage") or {}
    text = f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out tokens"
    cost = data.get("cost_usd")
    return text if cost is None else f"{text} · ${cost:.6f}"


class LiveView:
    """Renders events as they arrive: steps, tool calls, streamed text, tokens, time."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._first: datetime | None = None
        self._streaming: int | None = None

    def show(self, event: dict[str, Any]) -> None:
        """Print what `event` means."""
        kind, data, step = event["type"], event["data"], event.get("step")
        if event.get("at") and self._first is None:
            self._first = datetime.fromisoformat(event["at"])
        if kind == "model.delta":
            if self._streaming != step:
                self._line("  ")
                self._streaming = step
            self.out.write(data["text"])
            self.out.flush()
            return
        if self._streaming is not None:
            self.out.write("\n")
            self._streaming = None
        handler = getattr(self, "_" + kind.replace(".", "_"), None)
        if handler is not None:
            handler(step, data, event)

    def _line(self, text: str, end: str = "") -> None:
        self.out.write(text + end)
        self.out.flush()

    def _run_queued(self, _step: Any, data: dict[str, Any], event: dict[str, Any]) -> None:
        self._line(f"run {event['run_id']} · agent {data['agent']} · queued\n")

    def _run_started(self, _step: Any, data: dict[str, Any], _event: Any) -> None:
        self._line(f"started · model {data['model']}\n")

    def _run_cancel_requested(self, *_: Any) -> None:
        self._line("cancel requested: stopping at the next step boundary\n")

    def _model_started(self, step: int, data: dict[str, Any], _event: Any) -> None:
        attempt = f" (attempt {data['attempt']})" if data.get("attempt", 1) > 1 else ""
        self._line(f"▸ step {step} · model{attempt}\n")

    def _model_retrying(self, step: int, data: dict[str, Any], _event: Any) -> None:
        self._line(f"  ↻ step {step} retries in {data['countdown']} s: {_clip(data['error'])}\n")

    def _model_retracted(self, step: int, data: dict[str, Any], _event: Any) -> None:
        # A terminal cannot take printed text back: say that it no longer counts.
        self._line(f"  ↺ step {step}: discard the text streamed above ({data['reason']})\n")

    def _model_completed(self, step: int, data: dict[str, Any], _event: Any) -> None:
        for call in data.get("tool_calls", []):
            self._line(f"  → {call['name']}({_clip(call['arguments'], 120)})\n")
        self._line(f"  · {data['finish_reason']} · {_spent(data)}\n")

    def _tool_started(self, step: int, data: dict[str, Any], _event: Any) -> None:
        self._line(f"▸ step {step} · tool {data['name']}({_clip(data['arguments'] or '', 120)})\n")

    def _tool_completed(self, step: int, data: dict[str, Any], _event: Any) -> None:
        self._line(f"  ✓ {data['name']} → {_clip(data['result'])}\n")

    def _tool_failed(self, step: int, data: dict[str, Any], _event: Any) -> None:
        self._line(f"  ✗ {data['name']} failed: {_clip(data['error'])}\n")

    def _tool_outcome_unknown(self, step: int, data: dict[str, Any], _event: Any) -> None:
        self._line(f"  ? {data['name']}: outcome unknown (its worker died mid-call)\n")

    def _run_resumed(self, _step: Any, data: dict[str, Any], _event: Any) -> None:
        self._line(f"↻ resumed after {data['quiet_for']:.0f} s without progress\n")

    def _step_skipped(self, step: int, data: dict[str, Any], _event: Any) -> None:
        self._line(f"  ⊘ step {step} skipped: the run is {data['status']}\n")

    def _terminal(self, data: dict[str, Any], event: dict[str, Any]) -> None:
        status = data["status"]
        elapsed = ""
        if self._first is not None and event.get("at"):
            seconds = (datetime.fromisoformat(event["at"]) - self._first).total_seconds()
            elapsed = f" in {seconds:.2f} s"
        self._line(f"{_MARK.get(status, '·')} {status}{elapsed} · {_spent(data)}\n")
        if data.get("reason"):
            self._line(f"  reason: {data['reason']}\n")
        if data.get("result") is not None:
            self._line(f"\n{data['result']}\n")

    def _run_succeeded(self, _step: Any, data: dict[str, Any], event: dict[str, Any]) -> None:
        self._terminal(data, event)

    _run_failed = _run_succeeded
    _run_cancelled = _run_succeeded
    _run_timed_out = _run_succeeded
