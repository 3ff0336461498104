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


def without_metric_list(text: str) -> str:
    """The help less the paragraph the registries added (the metrics, listed from the registry)."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(" Metrics (--metric")), None)
    if start is None:
        return text
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[:start - 1] + lines[end + 1:])


def test_help_texts_are_unchanged_but_for_the_metric_list():
    texts = help_texts()
    for name, text in texts.items():
        assert without_metric_list(text) == (GOLDEN / "help" / f"{name}.txt").read_text(encoding="utf-8"), name
    for name in ("prune", "analyze", "sweep"):
        assert " Metrics (--metric NAME" in texts[name] and "shapley (Siddiqui" in texts[name]
