"""Per-stage peak memory in layerprune.json, and the pre-flight estimate that refuses a recipe before loading."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hf_layerprune.cli import app
from hf_layerprune.flow.memory import BUDGET_ENV, MemoryMeter, estimate, shape_of
from hf_layerprune.recipe import Recipe
from tiny_models import FAMILIES, save_word_tokenizer, tiny_config, tiny_model

runner = CliRunner()
MiB = 2**20


def test_stage_peaks_nest_and_see_a_transient_allocation():
    meter = MemoryMeter()
    with meter.stage("outer"):
        with meter.stage("inner"):
            block = torch.ones(64 * MiB // 4)  # 64 MiB, touched
            del block
        with meter.stage("after"):
            pass
    stages = meter.record(weight_bytes=MiB)["stages"]
    assert stages["inner"]["peak_rss_bytes"] >= stages["after"]["peak_rss_bytes"] + 48 * MiB
    assert stages["outer"]["peak_rss_bytes"] >= stages["inner"]["peak_rss_bytes"]


def test_estimate_counts_one_copy_and_what_healing_copies():
    shape = shape_of(tiny_config("llama", 6), 4)
    assert shape.parameters == tiny_model("llama", 6).num_parameters() and shape.num_layers == 6
    recipe = Recipe(model="x", drop=2, heal="absorb", calibration_samples=4, seq_len=16)
    lean = Recipe(model="x", drop=2, heal="none", evaluate=False, calibration_samples=4, seq_len=16)
    full = Recipe(model="x", drop=2, heal="distill:adapter=full", calibration_samples=4, seq_len=16)
    got = {name: estimate(shape, r)["estimate_bytes"] for name, r in (("absorb", recipe), ("lean", lean), ("full", full))}
    assert got["lean"] < got["absorb"] < got["full"]
    assert estimate(shape, lean)["parts"]["copy_on_write"] == 0


def checkpoint(tmp_path):
    path = tmp_path / "tiny"
    tiny_model("llama", num_layers=6).save_pretrained(path)
    save_word_tokenizer(path)
    return path


def test_a_recipe_that_will_not_fit_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "64MB")
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(checkpoint(tmp_path)), "--drop", "2", "--heal", "absorb", "--no-eval",
                                 "--calibration-samples", "4", "--seq-len", "16", "-o", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "needs about" in errors[0] and f"${BUDGET_ENV}" in errors[0]
    assert "Loading" not in result.output and not out.exists()


def test_the_report_has_peak_memory_per_stage_and_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "64GB")
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(checkpoint(tmp_path)), "--drop", "2", "--heal", "absorb", "--no-eval",
                                 "--calibration-samples", "4", "--seq-len", "16", "--heal-steps", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    memory = report["memory"]
    assert {"load", "score", "cut", "heal", "save"} <= set(memory["stages"])
    assert memory["peak_rss_bytes"] == max(s["peak_rss_bytes"] for s in memory["stages"].values())
    assert memory["weight_bytes"] == 4 * report["parameters_before"]
    assert report["preflight"]["estimate_bytes"] > memory["weight_bytes"] and report["preflight"]["budget_bytes"] == 64 * 10**9
    assert "Peak RSS (GiB)" in result.output


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_from_the_config_alone_for_every_family(family):
    shape = shape_of(tiny_config(family, 6), 4)
    assert shape.parameters == tiny_model(family, 6).num_parameters()
    assert 0 < shape.down_parameters < shape.layer_parameters and shape.num_layers == 6


def test_a_7b_on_a_24gb_gpu_budget_is_offered_the_4bit_route(monkeypatch):
    """Llama-2-7B's shape (config only, meta device) in fp32 does not fit 16 GiB; the refusal names --load-in-4bit,
    whose own estimate is the NF4 weights (~0.3 x the bf16 bytes) plus small terms."""
    from transformers import LlamaConfig

    from hf_layerprune.runtime.errors import ConfigError
    from hf_layerprune.flow.memory import GiB, check_fits

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         vocab_size=32000)
    monkeypatch.setenv(BUDGET_ENV, "16GiB")
    recipe = Recipe(model="x", drop=8, heal="absorb", calibration_samples=32, seq_len=256).resolve_defaults()
    with pytest.raises(ConfigError, match="--load-in-4bit") as err:
        check_fits(shape_of(config, 4), recipe, device="cuda")
    assert "\n" not in str(err.value)
    four = Recipe(model="x", drop=8, load_in_4bit=True, calibration_samples=32, seq_len=256).resolve_defaults()
    got = estimate(shape_of(config, 2), four, device="cuda")
    bf16 = shape_of(config, 2).weight_bytes
    assert 0.28 * bf16 < got["weight_bytes"] < 0.32 * bf16 and got["estimate_bytes"] < 5 * GiB
