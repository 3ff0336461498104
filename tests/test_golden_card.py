"""The card and the CLI help say exactly what they said before the registries (tests/golden_cards.py records)."""

from __future__ import annotations

import json

import pytest

from golden_cards import GOLDEN, help_texts, render

CARDS = sorted(p.stem for p in (GOLDEN / "reports").glob("*.json"))


def test_golden_set_is_complete():
    assert len(CARDS) >= 15 and {p.stem for p in (GOLDEN / "cards").glob("*.md")} == set(CARDS)


@pytest.mark.parametrize("name", CARDS)
def test_card_text_is_unchanged(tmp_path, name):
    report = json.loads((GOLDEN / "reports" / f"{name}.json").read_text())
    expected = (GOLDEN / "cards" / f"{name}.md").read_text(encoding="utf-8")
    assert render(report, name, tmp_path) == expected


def test_help_texts_are_unchanged():
    for name, text in help_texts().items():
        assert text == (GOLDEN / "help" / f"{name}.txt").read_text(encoding="utf-8"), name
