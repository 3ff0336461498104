"""`--target params=F | kv=F` (budget.py, issue 35): candidate plans mix whole-layer and attention-only removals,
each meets the budget within one unit, the judge leaves the model bit-identical, the run writes the plan it chose
(a stock cut when whole layers pay, else a DeciLM export that loads), and bad targets are one `Error:` line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hf_layerprune.flow.budget import budget, candidate_plans, plan_for_target, unit_sizes
from hf_layerprune.cli import app
from hf_layerprune.recipe import Recipe
from tiny_models import save_word_tokenizer, tiny_model

FAST = ["--no-eval", "--calibration-samples", "4", "--seq-len", "16"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("budget") / "src"
    tiny_model("llama", num_layers=6).save_pretrained(path)
    save_word_tokenizer(path)
    return path


def test_every_candidate_meets_the_budget_within_one_unit():
    whole, attention = [100, 110, 120, 130, 140, 150], [30, 31, 32, 33, 34, 35]
    order = [5, 2, 0, 3, 1]  # least important first; the most important (4) is left out by the caller
    attn_order = [0, 3, 5, 1, 2, 4]
    for amount in (10, 95, 260, 400):
        plans = candidate_plans(order, attn_order, whole, attention, "params", amount)
        assert plans and plans[-1][1] == [] or amount < min(whole)  # the last plan: whole layers alone
        for layers, attn in plans:
            paid = sum(whole[i] for i in layers) + sum(attention[i] for i in attn)
            units = [whole[i] for i in layers] + [attention[i] for i in attn]
            assert amount <= paid < amount + max(units), (amount, layers, attn)
            assert not set(layers) & set(attn)
            first_kept = min(set(range(6)) - set(layers))
            assert first_kept not in attn  # a DeciLM export's first block keeps its attention
    kv = candidate_plans(order, attn_order, whole, attention, "kv", 3)
    assert all(len(layers) + len(attn) == 3 for layers, attn in kv)
    assert budget("params=0.8", 1000, 6) == ("params", 200) and budget("kv=0.5", 1000, 6) == ("kv", 3)


def test_judging_the_plans_leaves_the_model_bit_identical(src):
    from hf_layerprune.surgery.loading import load_model

    model, tokenizer = load_model(str(src))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    recipe = Recipe(model=str(src), target="params=0.8", calibration_samples=4, seq_len=16)
    whole, attn, section = plan_for_target(model, tokenizer, recipe, log=lambda _: None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)
    assert section["judged_by"] == "last_word_nll" and "last-word NLL on 3 held-out articles" in section["judge"]
    assert all(c["last_word_targets"] > 0 and c["last_word_nll"] > 0 for c in section["candidates"])
    assert section["chosen"] == min(section["candidates"], key=lambda c: c["last_word_nll"])
    assert (section["chosen"]["whole_layers"], section["chosen"]["attention_only"]) == (whole, attn)
    sizes = unit_sizes(model)
    assert section["chosen"]["parameters_removed"] == sum(sizes[0][i] for i in whole) + sum(sizes[1][i] for i in attn)


def test_the_plans_take_the_planted_unimportant_units():
    """Layer 2 computes nothing (its outputs zeroed) and layer 4's attention adds nothing: a budget of one layer is
    paid by layer 2, and the KL of that plan is 0; a budget of one layer plus one attention adds layer 4's attention."""
    from test_scoring import plant_identity, planted

    model = plant_identity(planted("llama", identity=[2]), 4, "attention")
    whole, attention = unit_sizes(model)
    total = sum(p.numel() for p in model.parameters())
    recipe = Recipe(model="m", target=f"params={1 - whole[2] / total + 1e-9}", calibration_samples=4, seq_len=16)
    layers, attn, section = plan_for_target(model, None, recipe, log=lambda _: None)
    assert (layers, attn) == ([2], []) and section["chosen"]["held_out_kl"] < 1e-6
    recipe = Recipe(model="m", target=f"params={1 - (whole[2] + attention[4]) / total + 1e-9}", calibration_samples=4,
                    seq_len=16)
    layers, attn, section = plan_for_target(model, None, recipe, log=lambda _: None)
    assert (layers, attn) == ([2], [4]) and section["chosen"]["held_out_kl"] < 1e-6


def test_without_natural_text_the_plans_are_judged_by_kl(src, monkeypatch, tmp_path):
    from hf_layerprune.surgery.loading import load_model

    monkeypatch.setenv("LAYERPRUNE_JUDGE_TEXT", str(tmp_path / "missing" / "valid.tokens"))
    model, tokenizer = load_model(str(src))
    logged = []
    recipe = Recipe(model=str(src), target="params=0.8", calibration_samples=4, seq_len=16)
    _, _, section = plan_for_target(model, tokenizer, recipe, log=logged.append)
    assert section["judged_by"] == "held_out_kl" and "last_word_nll" not in section["candidates"][0]
    assert section["chosen"] == min(section["candidates"], key=lambda c: c["held_out_kl"])
    assert any("judging by KL" in line for line in logged)


@pytest.mark.parametrize("target", ["params=0.8", "kv=0.5"])
def test_a_target_run_writes_the_plan_it_chose_and_it_loads(src, tmp_path, target):
    from hf_layerprune.surgery.checkpoint import load_checkpoint

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(src), "--target", target, "--heal", "none", *FAST, "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    chosen = report["scoring"]["chosen"]
    assert report["recipe"]["target"] == target and report["scoring"]["metric"] == "target"
    kind, amount = report["scoring"]["budget"]["kind"], report["scoring"]["budget"]["amount"]
    if kind == "params":
        removed = report["parameters_before"] - report["parameters_after"]
        assert amount <= removed == chosen["parameters_removed"]
    else:
        assert chosen["attention_removed"] >= amount
    assert report["removed_layers"] == chosen["whole_layers"]
    if chosen["attention_only"]:
        assert report["granularity"] == "mixed"
        assert report["removed_sublayers"]["attention"] == sorted(chosen["whole_layers"] + chosen["attention_only"])
    model = load_checkpoint(out)
    assert sum(p.numel() for p in model.parameters()) == report["parameters_after"]
    assert "--target" in (out / "README.md").read_text() or not chosen["attention_only"]


@pytest.mark.parametrize("args, phrase", [
    (["--target", "params=0.8", "--drop", "1"], "not several"),
    (["--target", "speed=1.25"], "speed= is not supported"),
    (["--target", "params=1.5"], "0 < F < 1"),
    (["--target", "layers=0.5"], "params=F or kv=F"),
    (["--target", "params=0.8", "--granularity", "attention"], "drop --granularity"),
    (["--target", "params=0.8", "--rounds", "2"], "drop --rounds"),
    (["--target", "params=0.01"], "more than all layers but one"),
])
def test_a_bad_target_is_one_error_line(src, tmp_path, args, phrase):
    result = CliRunner().invoke(app, ["prune", str(src), *args, "--heal", "none", *FAST, "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and phrase in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, phrase", [
    (["sweep", "{src}", "--drop", "1,2", "--target", "params=0.8", "-o", "{out}"], "a budget is one prune"),
    (["push", "{src}", "--target", "params=0.8"], "give --repo-id"),
])
def test_sweep_and_push_say_what_a_target_needs(src, tmp_path, hub_server, argv, phrase):
    from conftest import WRITE_TOKEN

    args = [a.format(src=src, out=tmp_path / "o") for a in argv] + ["--heal", "none", *FAST, "--token", WRITE_TOKEN]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and phrase in result.stderr, result.output
