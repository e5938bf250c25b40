"""docs/events.md documents every event type of the catalogue, and nothing else."""

import re
from pathlib import Path

import pytest

from storage.events import CATALOGUE, EVENT_FOR_STATUS, LIVE_ONLY, TERMINAL_EVENTS

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC.exists(), f"{DOC} is missing: it documents every event type"
    return DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("event_type", sorted(CATALOGUE))
def test_every_event_type_in_the_catalogue_is_documented(doc, event_type):
    assert f"`{event_type}`" in doc, f"docs/events.md does not mention `{event_type}`"


def test_the_doc_documents_no_event_type_the_catalogue_lacks(doc):
    headings = [line for line in doc.splitlines() if line.startswith("### ")]
    documented = {t for line in headings for t in re.findall(r"`([a-z_]+\.[a-z_]+)`", line)}
    assert documented, "no '### `type`' headings found"
    assert documented <= set(CATALOGUE), documented - set(CATALOGUE)


def test_the_catalogue_is_consistent():
    assert set(CATALOGUE) >= LIVE_ONLY
    assert set(CATALOGUE) >= TERMINAL_EVENTS
    assert set(EVENT_FOR_STATUS.values()) == TERMINAL_EVENTS
    assert not LIVE_ONLY & TERMINAL_EVENTS
    assert all(description.strip() for description in CATALOGUE.values())
