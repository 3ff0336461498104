"""`--heal-budget`: a wall-clock training time that sets a trained healer's steps (healing/training.py `_WallClock`).
A run must stop within 10% of its budget, the learning rate must follow the schedule over time, and the chain's
trained stages share one budget."""

from __future__ import annotations

import pytest

from hf_layerprune.runtime.errors import ConfigError, LayerPruneError
from hf_layerprune.healing import heal, heal_for_recipe
from hf_layerprune.healing.training import _WallClock
from hf_layerprune.recipe import Recipe, parse_duration
from test_healing import QUIET, markov_ids, pruned

BUDGET = 3.0
LONGER = 8.0  # two trained runs, each with the Trainer's ~1-2 s setup on a busy 2-core machine


def train_seconds(record: dict) -> float:
    """Seconds spent in the Trainer: the record's tokens over its training throughput."""
    return record["tokens"] / record["tokens_per_second"]


def test_durations_and_the_schedule_over_time():
    assert parse_duration("20m") == 1200 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45 and parse_duration(None) is None
    for bad in ("soon", "-3m", "0s", "20 minutes"):
        with pytest.raises(ConfigError, match="--heal-budget"):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="--heal-budget"):
        Recipe(model="x", drop=1, heal_budget="a while")
    clock = _WallClock(100.0, 1e-3, 0.1, "cosine")
    assert clock.rate(0.0) == 0 and clock.rate(0.05) == pytest.approx(5e-4) and clock.rate(0.1) == pytest.approx(1e-3)
    assert clock.rate(0.55) == pytest.approx(5e-4) and clock.rate(1.0) == pytest.approx(0.0, abs=1e-12)
    assert _WallClock(10.0, 1.0, 0.0, "linear").rate(0.25) == pytest.approx(0.75)


def test_a_lora_budget_stops_within_ten_percent_and_sets_the_steps():
    _, model, report = pruned()
    record = heal(model, "lora", markov_ids(32), eval_ids=markov_ids(8, seed=9), budget=f"{BUDGET}s", report=report,
                  learning_rate=3e-3, **QUIET)
    assert abs(train_seconds(record) - BUDGET) <= 0.1 * BUDGET, record
    assert record["steps"] > 5 and record["tokens"] == record["steps"] * 4 * 32  # batch 4 x 32 tokens per step
    assert record["loss_after"] < record["loss_before"]  # it trained, on a schedule that ends at a zero rate
    capped = heal(pruned()[1], "lora", markov_ids(32), budget=f"{BUDGET}s", steps=3, **QUIET)
    assert capped["steps"] == 3 and train_seconds(capped) < BUDGET  # --heal-steps caps a budget


def test_absorb_runs_share_the_budget_through_the_recipe():
    """Two removed runs (layers 1 and 4) train one after another: together they stay within 10% of the budget."""
    base, model, report = pruned(removed=(1, 4))
    recipe = Recipe(model="x", layers=[1, 4], heal="absorb", heal_budget=f"{LONGER}s", calibration_samples=4,
                    seq_len=32, calibration="self")
    record = heal_for_recipe(model, None, recipe, report, base_model=base, **QUIET)[0].to_dict()
    assert len(record["runs"]) == 2 and record["options"]["budget"] == f"{LONGER}s" and record["steps"] > 2
    assert abs(train_seconds(record) - LONGER) <= 0.1 * LONGER, record


def test_a_chain_splits_the_budget_between_its_trained_stages():
    base, model, report = pruned()
    recipe = Recipe(model="x", layers=[2, 3], heal="lora+distill", heal_budget=f"{LONGER}s", calibration_samples=4,
                    seq_len=32, calibration="self")
    record = heal_for_recipe(model, None, recipe, report, base_model=base, **QUIET)[0].to_dict()
    stages = record["stages"]
    assert [s["options"]["budget"] for s in stages] == ["4.000s", "4.000s"]
    assert all(abs(train_seconds(s) - LONGER / 2) <= 0.1 * LONGER / 2 for s in stages), stages


def test_a_bad_budget_in_a_heal_option_is_refused():
    with pytest.raises(LayerPruneError, match="--heal-budget"):
        heal(pruned()[1], "lora:budget=later", markov_ids(4), **QUIET)
