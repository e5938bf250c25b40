"""A real worker streams a long answer to a follower in fewer, longer deltas, text intact."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests import fake_openai as wire
from tests.fake_openai import FakeOpenAI
from tests.test_integration_provider_retries import (  # noqa: F401 (fixtures)
    followed_run,
    server,
    start,
)

PIECES = [f"word{n} " for n in range(300)]


def test_a_long_answer_reaches_a_follower_whole_in_fewer_deltas_than_the_model_sent(
    start: Callable[..., Any],  # noqa: F811
    server: FakeOpenAI,  # noqa: F811
) -> None:
    start()
    # The reply waits a little, so the follower below is listening when it streams; its
    # fragments come 1 ms apart, so the answer streams over several delta intervals.
    server.reply(wire.Hang(1.0, wire.Stream(wire.text_deltas(*PIECES), pace=0.001)))
    run, seen = followed_run("Say a lot.")

    assert run.status == "succeeded", run.error
    assert run.result == "".join(PIECES)
    deltas = [e["data"] for e in seen if e["type"] == "model.delta"]
    assert "".join(d["text"] for d in deltas) == run.result
    # 300 fragments over 0.3 s or more: the first at once, the rest held and joined.
    assert 1 < len(deltas) < len(PIECES) / 10
    assert {(d["kind"], d["index"], d["attempt"]) for d in deltas} == {("text", 0, 1)}
