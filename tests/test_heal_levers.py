"""Issue 35's healing levers: `rescale` (Prune&Comp), `absorb:side=both`, `tail` (last layers + head, KL)."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_layerprune.surgery.base_view import trial
from hf_layerprune.runtime.errors import LayerPruneError
from hf_layerprune.healing import heal
from hf_layerprune.healing.absorb import spans, with_after
from hf_layerprune.healing.base import contiguous_runs
from hf_layerprune.surgery.layers import remove_layers
from test_healing import LAYERS, QUIET, assert_stock_reload, logits, markov_ids, pruned
from tiny_models import tiny_model

EXACT = dict(rms_norm_eps=1e-12)  # the fold is exact up to the norms' eps; tiny random streams are small


def reference_rescale(base, pruned_model, removed, kept, ids):
    """Prune&Comp computed independently: the scale from `output_hidden_states` of the unpruned model (per channel
    mean |h| after / before each run, averaged over channels), and the fold written out by hand for Llama."""
    with torch.no_grad():
        hidden = base(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states  # [i]: input of layer i
    runs = [run for run in contiguous_runs(removed) if run[-1] + 1 < LAYERS]
    scales = [float((hidden[r[-1] + 1].abs().mean((0, 1)) / hidden[r[0]].abs().mean((0, 1))).mean()) for r in runs]
    model = copy.deepcopy(pruned_model)
    reads = [kept.index(r[-1] + 1) for r in runs]
    total = torch.tensor(scales).prod().item()
    with torch.no_grad():
        for j, layer in enumerate(model.model.layers):
            factor = torch.tensor([s for s, at in zip(scales, reads) if at > j] or [1.0]).prod().item()
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)
        model.model.embed_tokens.weight.mul_(total)  # a tied lm_head is scaled with it...
        if model.config.tie_word_embeddings:
            model.model.norm.weight.div_(total)  # ...and the final norm takes it back out of the logits
    return model, scales


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("removed", [(2, 3), (1, 3, 4), (0, 5)])
def test_rescale_equals_an_independent_computation_and_reloads(tied, removed, tmp_path):
    base, model, report = pruned(removed=removed, tie_word_embeddings=tied, **EXACT)
    ids = markov_ids(16)
    want, scales = reference_rescale(base, model, list(removed), report["kept_layers"], ids)
    assert all(abs(s - 1) > 0.01 for s in scales), scales  # the test model has a gap to close
    record = heal(model, "rescale:keep_if_better=false", ids, base_model=base, report=report,
                  eval_ids=markov_ids(4, seed=9), **QUIET)
    assert [r["scale"] for r in record["runs"]] == pytest.approx(scales, rel=1e-5)
    probe = markov_ids(3, 24, seed=5)
    torch.testing.assert_close(logits(model, probe), logits(want, probe), rtol=1e-4, atol=1e-5)
    assert record["fusion_error"] < 1e-5 and record["tied_head"] == tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    reloaded = assert_stock_reload(model, tmp_path)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tied


@pytest.mark.parametrize("tied", [False, True])
def test_rescale_in_the_shared_base_view_leaves_the_base_bit_identical(tied):
    model = tiny_model("llama", num_layers=LAYERS, tie_word_embeddings=tied)
    ids, probe = markov_ids(16), markov_ids(2, 20, seed=3)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    want = logits(model, probe)
    report = {"removed_layers": [2, 3], "kept_layers": [0, 1, 4, 5], "num_layers_before": LAYERS}
    with trial(model) as shared:
        remove_layers(model, [2, 3])
        heal(model, "rescale:keep_if_better=false", ids, base_model=shared, report=report, **QUIET)
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        with shared.active() as as_base:
            torch.testing.assert_close(logits(as_base, probe), want, rtol=0, atol=0)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_rescale_chains_with_absorb_and_refuses_what_it_cannot_fold():
    base, model, report = pruned(removed=(2, 3))
    record = heal(model, "rescale+absorb", markov_ids(16), base_model=base, report=report,
                  eval_ids=markov_ids(8, seed=9), steps=30, **QUIET)
    assert record["method"] == "rescale+absorb" and [s["method"] for s in record["stages"]] == ["rescale", "absorb"]
    assert record["stages"][1]["runs"][0]["block_mse_after"] < record["stages"][1]["runs"][0]["block_mse_before"]
    # a trailing run is left alone: only the final norm reads the stream there
    base, model, report = pruned(removed=(4, 5))
    before = [p.detach().clone() for p in model.parameters()]
    assert heal(model, "rescale", markov_ids(8), base_model=base, report=report, **QUIET)["runs"] == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for family, words in [("qwen2_moe", "sparse MoE"), ("gemma2", "normalises the MLP output")]:
        base, model, report = pruned(family)
        with pytest.raises(LayerPruneError, match=words):
            heal(model, "rescale", markov_ids(8), base_model=base, report=report, **QUIET)


# ----------------------------------------------------------------------------------------------- absorb:side=both


def test_absorb_side_both_spans_take_kept_layers_after_each_run_too():
    both = lambda removed, n, w: [(s.run, s.layers, s.end) for s in with_after(spans(removed, n, w), removed, n, w)]  # noqa: E731
    assert both([13, 14, 15, 16, 17, 18], 30, 2) == [([13, 14, 15, 16, 17, 18], [11, 12, 19, 20], 21)]
    # never a layer of the next span; a run at the end has nothing after it
    assert both([3, 4, 8, 9], 10, 2) == [([3, 4], [1, 2, 5], 6), ([8, 9], [6, 7], 10)]
    assert both([0, 1, 4], 8, 1) == [([0, 1], [2], 3), ([4], [3, 5], 6)]
    with pytest.raises(LayerPruneError, match="side"):
        heal(None, "absorb:side=after", markov_ids(2))


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_absorb_side_both_trains_the_layers_after_the_run_and_reloads(family, tmp_path):
    base, model, report = pruned(family, removed=(2, 3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = heal(model, "absorb:layers=1,side=both,keep_if_better=false", markov_ids(16), base_model=base,
                  report=report, eval_ids=markov_ids(8, seed=9), steps=30, **QUIET)
    assert record["runs"][0]["layers"] == [1, 4] and record["options"]["side"] == "both"
    changed = {int(n.split("layers.")[1].split(".")[0]) for n, p in model.named_parameters()
               if "layers." in n and not torch.equal(before[n], p)}
    assert {report["kept_layers"][j] for j in changed} == {1, 4}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if "layers." not in n)
    assert record["runs"][0]["block_mse_after"] < record["runs"][0]["block_mse_before"]
    assert_stock_reload(model, tmp_path)


def test_absorb_record_names_side_only_when_it_is_not_the_default():
    base, model, report = pruned(removed=(2, 3))
    record = heal(model, "absorb:samples=8", markov_ids(8), base_model=base, report=report, steps=2, **QUIET)
    assert "side" not in record["options"]  # reports of the default stay as they were (golden outputs)


# ----------------------------------------------------------------------------------------------- tail


@pytest.mark.parametrize("tied, positions", [(False, 8), (True, None)])  # KL at 8 random positions, or at all 32
def test_tail_lowers_kl_trains_only_the_tail_and_keeps_tied_weights(tied, positions, tmp_path):
    base, model, report = pruned(removed=(2, 3), tie_word_embeddings=tied)
    base_before = {n: p.detach().clone() for n, p in base.state_dict().items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec = f"tail:layers=2,keep_if_better=false,learning_rate=1e-3{f',positions={positions}' if positions else ''}"
    record = heal(model, spec, markov_ids(16), base_model=base,
                  report=report, eval_ids=markov_ids(8, seed=9), steps=30, **QUIET)
    assert record["kl_after"] < record["kl_before"] and record["head_trained"] == (not tied)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    tail = {n for n in before if n.startswith(("model.layers.2.", "model.layers.3.", "model.norm."))}
    assert changed == tail | ({"lm_head.weight"} if not tied else set())
    assert all(torch.equal(base_before[n], p) for n, p in base.state_dict().items())
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert_stock_reload(model, tmp_path)


def test_tail_in_the_shared_base_view_leaves_the_base_bit_identical():
    model = tiny_model("llama", num_layers=LAYERS, tie_word_embeddings=True)
    probe = markov_ids(2, 20, seed=3)
    want = logits(model, probe)
    report = {"removed_layers": [2, 3], "kept_layers": [0, 1, 4, 5], "num_layers_before": LAYERS}
    with trial(model) as shared:
        remove_layers(model, [2, 3])
        record = heal(model, "tail:keep_if_better=false", markov_ids(16), base_model=shared, report=report,
                      steps=5, **QUIET)
        assert record["kl_after"] != record["kl_before"]
        with shared.active() as as_base:
            torch.testing.assert_close(logits(as_base, probe), want, rtol=0, atol=0)
    torch.testing.assert_close(logits(model, probe), want, rtol=0, atol=0)


def test_tail_options_are_checked():
    for bad, words in (("tail:layers=0", "layers=0 must be at least 1"), ("tail:positions=0", "positions=0 must be at"),
                       ("tail:temperature=0", "temperature=0.0 must be more than 0")):
        with pytest.raises(LayerPruneError, match=words):
            heal(None, bad, markov_ids(2))
    base, model, report = pruned(removed=(2, 3))
    with pytest.raises(LayerPruneError, match="has 4 layers"):
        heal(model, "tail:layers=5", markov_ids(4), base_model=base, report=report, **QUIET)
