"""Selection strategies on plain score lists (no model)."""

from __future__ import annotations

import pytest

from hf_layerprune.runtime.errors import LayerPruneError
from hf_layerprune.runtime.selection import (
    check_strategy,
    contiguous,
    greedy,
    parse_protect,
    ranking,
    topk,
    window_scores,
)

SCORES = [0.9, 0.2, 0.5, 0.1, 0.3, 0.8]  # higher = more important


def test_parse_protect():
    assert parse_protect(["first", "last", "3"], 6) == {0, 3, 5}
    assert parse_protect("first, 2", 6) == {0, 2}
    assert parse_protect([4, " LAST "], 6) == {4, 5}
    assert parse_protect(None, 6) == set() and parse_protect([], 6) == set()
    with pytest.raises(LayerPruneError, match="cannot read --protect 'middle'"):
        parse_protect(["middle"], 6)
    with pytest.raises(LayerPruneError, match="out of range"):
        parse_protect(["6"], 6)


def test_topk_takes_the_least_important_units_sorted():
    assert topk(SCORES, 2, higher_is_more_important=True) == [1, 3]
    assert topk(SCORES, 2, higher_is_more_important=False) == [0, 5]
    assert topk(SCORES, 2, higher_is_more_important=True, protected={3}) == [1, 4]
    assert topk([0.5, None, 0.1], 1, higher_is_more_important=True) == [2]
    with pytest.raises(LayerPruneError, match="only 4 are not protected"):
        topk(SCORES, 5, higher_is_more_important=True, protected={0, 1})


def test_ranking_orders_least_important_first_with_stable_ties():
    assert ranking(SCORES, True) == [3, 1, 4, 2, 5, 0]
    assert ranking(SCORES, False) == [0, 5, 2, 4, 1, 3]
    assert ranking([1.0, 1.0, None, 0.5], True) == [3, 0, 1, 2]


def test_window_scores_and_contiguous():
    assert window_scores(SCORES, 2) == pytest.approx([1.1, 0.7, 0.6, 0.4, 1.1])
    assert window_scores([1.0, None, 2.0], 2) == [None, None]
    assert contiguous(window_scores(SCORES, 2), 2, higher_is_more_important=True) == [3, 4]
    assert contiguous(window_scores(SCORES, 2), 2, higher_is_more_important=True, protected={4}) == [2, 3]
    # block scores where higher means less important (LLM-Streamline's cosine)
    assert contiguous([0.2, 0.9, 0.4], 3, higher_is_more_important=False) == [1, 2, 3]
    with pytest.raises(LayerPruneError, match="no block of 2 consecutive units"):
        contiguous([0.1, 0.2, 0.3], 2, higher_is_more_important=True, protected={1, 2})


def test_greedy_rescores_after_each_removal_and_skips_protected():
    calls = []

    def step(removed, candidates):
        calls.append((list(removed), list(candidates)))
        scores = [None] * 6
        for u in candidates:  # removing unit 3 makes unit 4 essential: rescoring must see it
            scores[u] = SCORES[u] + (10.0 if 3 in removed and u == 4 else 0.0)
        return scores

    order, steps = greedy(step, 3, 6, higher_is_more_important=True, protected={0})
    assert order == [3, 1, 2]  # not [3, 1, 4] as one-shot top-k would give
    assert calls[0] == ([], [1, 2, 3, 4, 5])
    assert calls[1] == ([3], [1, 2, 4, 5]) and calls[2] == ([3, 1], [2, 4, 5])
    assert steps[1][4] == pytest.approx(10.3) and steps[0][0] is None
    with pytest.raises(LayerPruneError, match="only 5 are not protected"):
        greedy(step, 6, 6, higher_is_more_important=True, protected={0})


def test_check_strategy():
    assert check_strategy("greedy") == "greedy"
    with pytest.raises(LayerPruneError, match="unknown --selection 'best'; use one of contiguous, topk, greedy"):
        check_strategy("best")
