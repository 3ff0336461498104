"""Healing on tiny random models: every healer lowers its loss, folds exactly and saves stock weights."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_layerprune.runtime.errors import LayerPruneError
from hf_layerprune.healing import DEFAULT_HEALER, HEALERS, as_cut, check_heal, heal, heal_and_cut, heal_for_recipe
from hf_layerprune.healing.base import HealContext
from hf_layerprune.healing.compensation import ClosedFormOptions, enable_mlp_bias, fit_site, site_for_block
from hf_layerprune.healing.lora import LoraOptions, merge_adapter, train_adapter
from hf_layerprune.recipe import Recipe
from hf_layerprune.report import Report
from hf_layerprune.surgery.layers import kept_layers, remove_layers
from tiny_models import VOCAB, tiny_model

LAYERS = 6
QUIET = dict(log=lambda message: None)


def markov_ids(samples: int, length: int = 32, seed: int = 0) -> torch.Tensor:
    """Learnable text: each token is followed by one of two fixed successors (same chain for every seed)."""
    successors = torch.randint(3, VOCAB, (VOCAB, 2), generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(samples, length, dtype=torch.long)
    ids[:, 0] = torch.randint(3, VOCAB, (samples,), generator=g)
    for t in range(1, length):
        ids[:, t] = successors[ids[:, t - 1], torch.randint(0, 2, (samples,), generator=g)]
    return ids


def pruned(family: str = "llama", removed=(2, 3), **overrides):
    base = tiny_model(family, num_layers=LAYERS, **overrides)
    model = copy.deepcopy(base)
    remove_layers(model, list(removed))
    report = {"removed_layers": list(removed), "kept_layers": kept_layers(removed, LAYERS), "num_layers_before": LAYERS}
    return base, model, report


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def assert_stock_reload(model, tmp_path) -> AutoModelForCausalLM:
    """Saved weights load with the stock class, no missing/unexpected keys, no remote code, same outputs."""
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert getattr(reloaded.config, "auto_map", None) is None
    assert not list(tmp_path.glob("*.py"))
    ids = markov_ids(2, 12, seed=77)
    torch.testing.assert_close(logits(reloaded.eval(), ids), logits(model, ids), rtol=1e-5, atol=1e-5)
    return reloaded


# ----------------------------------------------------------------------------------------------- registry


def test_registry_names_options_and_errors():
    assert set(HEALERS) == {"lora", "qlora", "distill", "replace", "absorb", "tail", "bias", "linear", "projection",
                            "rescale"}
    assert DEFAULT_HEALER in HEALERS
    assert HEALERS.has("distill:alpha=0.5", "needs_base") and HEALERS["linear"].needs_base_model
    assert not HEALERS["lora"].needs_base_model and HEALERS["lora"].trained and not HEALERS["linear"].trained
    assert HEALERS.with_capability("needs_base") == ("distill", "replace", "absorb", "tail", "bias", "linear",
                                                     "projection", "rescale")
    with pytest.raises(ValueError, match="already registered"):
        HEALERS.register(HEALERS["lora"])
    check_heal("distill:temperature=2,alpha=0.5")
    for bad, words in [("nope", "unknown --heal"), ("linear:foo=1", "has no option 'foo'"), ("replace:steps=x", "not a valid int"),
                       ("lora:rank", "key=value")]:
        with pytest.raises(LayerPruneError, match=words) as err:
            check_heal(bad)
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- lora / qlora


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_lora_lowers_heldout_loss_and_saves_stock_weights(family, tmp_path):
    _, model, _ = pruned(family)
    record = heal(model, "lora", markov_ids(32), eval_ids=markov_ids(8, seed=9), steps=30, learning_rate=3e-3, **QUIET)
    assert record["loss_after"] < record["loss_before"]
    assert record["targets"] == (["fc1", "fc2"] if family == "opt" else ["down_proj", "gate_proj", "up_proj"])
    assert len(record["losses"]) == record["steps"] == 30 and record["tokens"] == 30 * 4 * 32
    assert not [m for m in model.modules() if type(m).__module__.startswith("peft")]  # merged and unloaded
    assert_stock_reload(model, tmp_path)


def test_lora_never_targets_tied_lm_head(tmp_path):
    _, model, _ = pruned(tie_word_embeddings=True)
    record = heal(model, "lora", markov_ids(8), steps=2, targets=["lm_head", "down_proj"], **QUIET)
    assert record["targets"] == ["down_proj", "embed_tokens"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_stock_reload(model, tmp_path)


@pytest.mark.parametrize("family, names", [("llama", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
                                           ("opt", ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"])])
def test_lora_all_linear_adapts_every_linear_module_but_the_head(family, names, tmp_path):
    _, model, _ = pruned(family, tie_word_embeddings=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = heal(model, "lora", markov_ids(8), steps=3, learning_rate=1e-2, targets=["all-linear"], **QUIET)
    assert record["targets"] == names
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {n.split(".")[-2] for n in changed} == set(names)
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n}
    assert changed == linear  # every decoder linear weight, and nothing else (embeddings, norms, the tied head)
    assert_stock_reload(model, tmp_path)
    with pytest.raises(LayerPruneError, match="give it alone"):
        heal(model, "lora", markov_ids(8), steps=1, targets=["all-linear", "q_proj"], **QUIET)


def test_adapter_trained_on_a_copy_merges_into_the_original_weights():
    """The qlora merge path: train on another copy (4-bit on GPU), merge into the original-precision model."""
    _, model, _ = pruned()
    trained_on = copy.deepcopy(model)
    ctx = HealContext(trained_on, markov_ids(8), markov_ids(2), **QUIET)
    _, state, config, peft_model = train_adapter(ctx, LoraOptions(steps=5, learning_rate=1e-2), "qlora")
    merged_copy = peft_model.merge_and_unload()
    ids = markov_ids(2, seed=3)
    assert not torch.allclose(logits(merged_copy, ids), logits(model, ids))
    merge_adapter(model, config, state)
    torch.testing.assert_close(logits(model, ids), logits(merged_copy, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("bnb_cpu_path")
def test_qlora_on_the_cpu_trains_a_4bit_copy_and_merges_into_the_original_weights(tmp_path):
    """bitsandbytes' CPU backend: the whole qlora healer runs in CI (4-bit NF4 copy, LoRA backward, merge)."""
    _, model, _ = pruned()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = heal(model, "qlora", markov_ids(8), eval_ids=markov_ids(4, seed=7), steps=8, learning_rate=2e-2, **QUIET)
    assert record["method"] == "qlora" and record["merged_into"] == "torch.float32"
    assert record["loss_after"] < record["loss_before"]
    assert record["optimizer"] == "adamw_torch"  # paged AdamW exists on CUDA only
    changed = {n.split(".")[-2] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"gate_proj", "up_proj", "down_proj"}  # merged into the fp32 MLP weights, nothing else
    assert_stock_reload(model, tmp_path)


def test_qlora_and_4bit_teacher_fail_cleanly_without_a_4bit_backend_or_bitsandbytes(monkeypatch):
    from hf_layerprune.runtime.third_party import allow_bitsandbytes

    bitsandbytes = allow_bitsandbytes()
    if bitsandbytes is None:
        pytest.skip("bitsandbytes is not installed")

    base, model, report = pruned()
    ids = markov_ids(4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_cpu_backend(*args, **kwargs):
        raise NotImplementedError("no kernel for cpu")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", no_cpu_backend)  # an old, CUDA-only bitsandbytes
    for method in ("qlora", "distill:teacher=4bit"):
        with pytest.raises(LayerPruneError, match="CUDA GPU or bitsandbytes >= 0.48") as err:
            heal(model, method, ids, base_model=base, report=report, steps=1, **QUIET)
        assert "\n" not in str(err.value)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(LayerPruneError, match="pip install"):
        heal(model, "qlora", ids, steps=1, **QUIET)


# ----------------------------------------------------------------------------------------------- distill


def test_distill_lowers_kl_to_the_unpruned_model(tmp_path):
    base, model, report = pruned()
    record = heal(model, "distill", markov_ids(16), base_model=base, report=report, eval_ids=markov_ids(8, seed=9),
                  steps=20, learning_rate=3e-3, temperature=2.0, **QUIET)
    assert record["kd_after"] < record["kd_before"]
    assert record["temperature"] == 2.0 and record["alpha"] == 1.0 and len(record["losses"]) == 20
    assert all(p.requires_grad for p in base.parameters())  # the teacher is left as it was
    assert_stock_reload(model, tmp_path)


def test_full_distill_trains_every_weight_but_embeddings_and_head(tmp_path):
    base, model, report = pruned(tie_word_embeddings=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    teacher = {name: p.detach().clone() for name, p in base.named_parameters()}
    record = heal(model, "distill:adapter=full", markov_ids(16), base_model=base, report=report,
                  eval_ids=markov_ids(8, seed=9), steps=20, learning_rate=1e-3, **QUIET)
    assert record["kd_after"] < record["kd_before"] and record["adapter"] == "full" and record["lora_rank"] is None
    embed = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embed  # still tied, and untouched
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == set(before) - {"model.embed_tokens.weight"}, set(before) - changed
    assert record["trainable_parameters"] == sum(p.numel() for p in model.parameters()) - embed.numel()
    assert all(torch.equal(p, teacher[name]) and p.requires_grad for name, p in base.named_parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert_stock_reload(model, tmp_path)


def test_full_distill_default_learning_rate_and_bad_adapter():
    from hf_layerprune.healing.distill import FULL_LEARNING_RATE, DistillOptions

    assert DistillOptions(adapter="full").lr() == FULL_LEARNING_RATE < DistillOptions().lr()
    assert DistillOptions(adapter="full", learning_rate=5e-5).lr() == 5e-5
    base, model, report = pruned()
    with pytest.raises(LayerPruneError, match="adapter='qlora' must be one of lora, full"):
        heal(model, "distill:adapter=qlora", markov_ids(4), base_model=base, report=report, steps=1, **QUIET)


def test_distill_hidden_pairs_each_kept_layer_with_the_stream_it_read_in_the_base_model():
    from hf_layerprune.healing.distill import DistillLoss, hidden_loss, point_pairs

    assert point_pairs([0, 1, 3, 4, 5], 6) == [(1, 1), (2, 3), (3, 4), (4, 5), (5, 6)]
    base = tiny_model("llama", num_layers=LAYERS)
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: removing it changes no point
        base.model.layers[2].self_attn.o_proj.weight.zero_()
        base.model.layers[2].mlp.down_proj.weight.zero_()
    model = copy.deepcopy(base)
    remove_layers(model, [2])
    ids = markov_ids(4, 16)
    pairs = point_pairs(kept_layers([2], LAYERS), LAYERS)
    with torch.no_grad():
        exact = DistillLoss(model, base, 1.0, 1.0, hidden=1.0, pairs=pairs)(ids)["loss"]
        shifted = [(s, t + 1) for s, t in pairs[:-1]]  # one point off: the loss sees it
        off = DistillLoss(model, base, 1.0, 1.0, hidden=1.0, pairs=shifted)(ids)["loss"]
    assert float(exact) < 1e-6 and float(off) > 1e-2
    same = torch.randn(2, 3, 8)
    assert float(hidden_loss([same * 1.1], [same])) == pytest.approx(0.01, rel=1e-4)  # relative: 10% off -> 0.01


def test_distill_hidden_lowers_the_intermediate_state_loss_more_than_logits_alone(tmp_path):
    from hf_layerprune.healing.distill import DistillLoss, point_pairs

    base, model, report = pruned(removed=(2, 3))
    ids, held = markov_ids(16), markov_ids(8, seed=9)
    pairs = point_pairs(report["kept_layers"], LAYERS)

    @torch.no_grad()
    def state_loss(student) -> float:  # (KL + hidden term) - KL
        return float(DistillLoss(student, base, 1.0, 1.0, hidden=1.0, pairs=pairs)(held)["loss"]
                     - DistillLoss(student, base, 1.0, 1.0)(held)["loss"])

    logits_only = copy.deepcopy(model)
    before = state_loss(model)
    runs = {}
    for student, spec in ((model, "distill:adapter=full,hidden=1"), (logits_only, "distill:adapter=full")):
        runs[spec] = heal(student, spec, ids, base_model=base, report=report, eval_ids=held, steps=20,
                          learning_rate=1e-3, **QUIET)
    assert runs["distill:adapter=full,hidden=1"]["hidden"] == 1.0 and runs["distill:adapter=full"]["hidden"] == 0.0
    hidden = runs["distill:adapter=full,hidden=1"]
    assert hidden["kd_after"] < hidden["kd_before"] and "hidden_before" not in runs["distill:adapter=full"]
    assert state_loss(model) < 0.9 * state_loss(logits_only) < 0.9 * before
    assert hidden["hidden_before"] == pytest.approx(before, rel=1e-4)  # the record measures the same term
    assert hidden["hidden_after"] == pytest.approx(state_loss(model), rel=1e-4)
    assert_stock_reload(model, tmp_path)
    with pytest.raises(LayerPruneError, match="hidden=-1.0 must be at least 0"):
        heal(model, "distill:hidden=-1", ids, base_model=base, report=report, steps=1, **QUIET)


# ----------------------------------------------------------------------------------------------- replace


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2"])
def test_replace_gives_l_minus_n_plus_1_stock_layers(family, tmp_path):
    base, model, report = pruned(family, removed=(1, 2, 3))
    given = as_cut(report)
    record, cut = heal_and_cut(model, "replace", markov_ids(16), base_model=base, cut=given, steps=20,
                               learning_rate=1e-3, **QUIET)
    assert model.config.num_hidden_layers == LAYERS - 3 + 1 == len(model.get_decoder().layers)
    assert cut.removed_layers == [2, 3] and cut.kept_layers == [0, 1, 4, 5] and cut.num_layers_after == 4
    assert given.removed_layers == [1, 2, 3] and given.num_layers_after == 3  # a new section; the given one is kept
    assert record["replaced"] == {"layers": [1, 2, 3], "initialised_from": 1, "index": 1,
                                  "trainable_parameters": record["replaced"]["trainable_parameters"]}
    assert record["block_mse_after"] < record["block_mse_init"] and record["block_mse_after"] < record["block_mse_before"]
    layers = model.get_decoder().layers
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    if family == "qwen2":
        assert model.config.layer_types == [base.config.layer_types[i] for i in (0, 1, 4, 5)]
    reloaded = assert_stock_reload(model, tmp_path)
    reloaded.generate(markov_ids(1, 5), max_new_tokens=4, do_sample=False)  # KV cache indexed by the new layer_idx


def test_replace_lm_mode_lowers_lm_loss():
    base, model, report = pruned(removed=(2, 3))
    record = heal(model, "replace:mode=lm", markov_ids(16), base_model=base, report=report,
                  eval_ids=markov_ids(8, seed=9), steps=20, learning_rate=3e-3, **QUIET)
    assert record["loss_after"] < record["loss_before"] and record["mode"] == "lm"


@pytest.mark.parametrize("removed, words", [((1, 3), "one contiguous block"), ((2,), "n >= 2")])
def test_replace_refuses_what_it_cannot_do(removed, words):
    base, model, report = pruned(removed=removed)
    with pytest.raises(LayerPruneError, match=words):
        heal(model, "replace", markov_ids(4), base_model=base, report=report, steps=1, **QUIET)


# ----------------------------------------------------------------------------------------------- absorb


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2", "qwen2_moe"])
# each run is absorbed by the kept layer before it; a run starting at layer 0 by the kept layer after it
@pytest.mark.parametrize("removed, absorbers", [((2, 3), {1}), ((0, 4), {1, 3}), ((1, 2, 5), {0, 4})])
def test_absorb_keeps_the_depth_and_learns_each_blocks_job(family, removed, absorbers, tmp_path):
    base, model, report = pruned(family, removed=removed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = heal(model, "absorb:layers=1", markov_ids(16), base_model=base, report=report,
                  eval_ids=markov_ids(8, seed=9), steps=30, **QUIET)
    assert model.config.num_hidden_layers == LAYERS - len(removed) and report["removed_layers"] == list(removed)
    trained = {i for run in record["runs"] for i in run["layers"]}
    assert trained == absorbers
    kept = report["kept_layers"]
    for name, p in model.named_parameters():
        index = int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None
        changed = not torch.equal(before[name], p)
        assert changed == (index is not None and kept[index] in trained and not record.get("reverted")), name
    for run in record["runs"]:
        assert run["block_mse_after"] < run["block_mse_before"], run
    if not record.get("reverted"):
        assert record["loss_after"] < record["loss_before"]
    assert record["samples"] == min(30 * 8, 64, 16)
    assert_stock_reload(model, tmp_path)


def test_absorb_spans_take_up_to_width_kept_layers_and_never_cross_a_run():
    from hf_layerprune.healing.absorb import spans

    got = [(s.run, s.layers, s.end) for s in spans([0, 1, 4, 5, 7, 9], 10, width=2)]
    assert got == [([0, 1, 4, 5], [2, 3], 6), ([7], [6], 8), ([9], [8], 10)]
    assert [(s.layers, s.end) for s in spans([3, 4], 10, width=1)] == [([2], 5)]
    assert [(s.layers, s.end) for s in spans([3, 4, 8], 10, width=3)] == [([0, 1, 2], 5), ([5, 6, 7], 9)]


def test_absorb_undoes_a_layer_that_raises_the_held_out_loss():
    base, model, report = pruned(removed=(2, 3))
    before = [p.detach().clone() for p in model.parameters()]
    # trained on one repeated token, judged on the Markov text: the fit cannot help there
    record = heal(model, "absorb:learning_rate=0.05", torch.full((8, 32), 5), base_model=base, report=report,
                  eval_ids=markov_ids(8, seed=9), steps=20, **QUIET)
    assert record["reverted"] and record["loss_after"] == record["loss_before"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------------------------- closed form


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("method", ["bias", "linear", "projection"])
def test_closed_form_lowers_block_mse_and_saves_stock_weights(family, method, tmp_path):
    base, model, report = pruned(family)
    ids = markov_ids(48)
    record = heal(model, method, ids, base_model=base, report=report, eval_ids=ids, **QUIET)  # on the calibration set
    assert all(after < before for before, after in zip(record["block_mse_before"], record["block_mse_after"]))
    assert all(c["fusion_error"] < 1e-5 for c in record["corrections"])
    reloaded = assert_stock_reload(model, tmp_path)
    if method == "bias" and family == "llama":
        assert reloaded.config.mlp_bias and record["config_changes"]["zero_biases_added"] == [
            "down_proj.bias", "gate_proj.bias", "up_proj.bias"]


def test_linear_generalises_to_heldout_text():
    base, model, report = pruned("opt")
    record = heal(model, "linear", markov_ids(64), base_model=base, report=report, eval_ids=markov_ids(16, seed=9), **QUIET)
    assert record["block_mse_after"][0] < 0.5 * record["block_mse_before"][0]


@pytest.mark.parametrize(
    "family, removed, method",
    [("llama", (2, 3), "bias"), ("llama", (2, 3), "linear"), ("opt", (2, 3), "bias"), ("opt", (1, 3), "linear"),
     ("llama", (0, 1), "linear"), ("llama", (0, 1), "bias"), ("qwen2", (2, 3), "linear")],
)
def test_fusion_equals_the_explicit_correction(family, removed, method):
    """Folding into weights == the unfused pruned model with a forward hook adding y·Δ + c to the site's output."""
    base, model, report = pruned(family, removed)
    if method == "bias":
        before = logits(model, markov_ids(2, seed=4))
        enable_mlp_bias(model)
        torch.testing.assert_close(logits(model, markov_ids(2, seed=4)), before)  # zero biases change nothing
    ctx = HealContext(model, markov_ids(32), markov_ids(2), base, as_cut(report), **QUIET)
    blocks = [[removed[0]], [removed[1]]] if removed[1] != removed[0] + 1 else [list(removed)]
    site = site_for_block(model, blocks[0], report["kept_layers"], method)
    correction = fit_site(ctx, site, blocks[0][-1] + 1, ClosedFormOptions(), mode=method)
    delta = correction.delta.float() if correction.delta is not None else torch.zeros(32, 32)
    bias = correction.bias.float() if correction.bias is not None else torch.zeros(32)
    assert delta.abs().max() > 0 or bias.abs().max() > 0
    ids = markov_ids(3, seed=5)
    handle = site.module(model).register_forward_hook(lambda m, a, out: out + out @ delta + bias)
    want = logits(model, ids)
    handle.remove()
    assert not torch.allclose(want, logits(model, ids))
    correction.fuse(model)
    torch.testing.assert_close(logits(model, ids), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma2", "phi3", "qwen2_moe", "mistral"])
def test_bias_refuses_families_without_a_bias(family):
    base, model, report = pruned(family)
    with pytest.raises(LayerPruneError, match=family) as err:
        heal(model, "bias", markov_ids(4), base_model=base, report=report, **QUIET)
    assert "\n" not in str(err.value)


def test_fold_refusals_name_the_reason():
    base, model, report = pruned("gemma2")  # a norm after the MLP: refused up front, before any fitting
    with pytest.raises(LayerPruneError, match="normalises the MLP output"):
        heal(model, "linear", markov_ids(4), base_model=base, report=report, **QUIET)
    base, model, report = pruned("llama", removed=(0, 1), tie_word_embeddings=True)
    with pytest.raises(LayerPruneError, match="tied to lm_head"):
        heal(model, "linear", markov_ids(4), base_model=base, report=report, **QUIET)
    base, model, report = pruned("opt", removed=(2, 3), do_layer_norm_before=False)
    with pytest.raises(LayerPruneError, match="not 'rest \\+ its output'"):
        heal(model, "bias", markov_ids(4), base_model=base, report=report, **QUIET)
    base, model, report = pruned("qwen2_moe")
    for method in ("linear", "projection", "bias", "absorb+linear"):
        with pytest.raises(LayerPruneError, match="no single down_proj") as err:  # refused before any stage runs
            heal(model, method, markov_ids(4), base_model=base, report=report, **QUIET)
        assert str(err.value).startswith(f"--heal {method.split('+')[-1]}: qwen2_moe has sparse MoE MLPs")
    assert HEALERS["linear"].refuses(base) and HEALERS["absorb"].refuses(base) is None


def test_projection_picks_the_most_drifted_layer():
    base, model, report = pruned(removed=(2, 3))
    record = heal(model, "projection", markov_ids(32), base_model=base, report=report, layers=2, **QUIET)
    shifts = record["mean_shift"]
    assert shifts[0] == 0 and shifts[1] == 0 and min(shifts[2:]) > 0  # nothing before the cut has moved
    top = sorted(range(1, len(shifts)), key=lambda j: -shifts[j])[:2]
    assert [c["layer"] for c in record["corrections"]] == sorted(j - 1 for j in top)


# ----------------------------------------------------------------------------------------------- pipeline stage


@pytest.mark.parametrize("method, extra", [("linear", {}), ("lora", {"heal_steps": 2, "lora_rank": 4}),
                                           ("absorb:samples=8", {"heal_steps": 3})])
def test_heal_for_recipe_builds_data_and_record(method, extra):
    base, model, report = pruned()
    recipe = Recipe(model="tiny", drop=2, heal=method, calibration="self", calibration_samples=6, seq_len=16, **extra)
    record = heal_for_recipe(model, None, recipe, report, base_model=base, **QUIET)[0].to_dict()
    for key in ("method", "steps", "tokens", "seconds", "losses", "loss_before", "loss_after", "data"):
        assert key in record, key
    assert record["data"]["source"] == "self" and record["data"]["seq_len"] == 16
    if method == "lora":
        assert record["lora_rank"] == 4 and record["steps"] == 2 and record["data"]["samples"] == 2 * 4 + 4
    elif method.startswith("absorb"):  # 3 steps x 8 per step, but only `samples` distinct sequences, cycled
        assert record["steps"] == 3 and record["samples"] == 8 and record["data"]["samples"] == 8 + 4
    else:
        assert record["data"]["samples"] == 6 + 4


# ----------------------------------------------------------------------------------------------- chains


def test_chain_runs_healers_in_order_and_records_each():
    from hf_layerprune.healing import split_chain

    assert split_chain("linear+distill:alpha=0.5") == ["linear", "distill:alpha=0.5"]
    assert split_chain("lora:targets=q_proj+v_proj") == ["lora:targets=q_proj+v_proj"]  # a `+` inside a value
    with pytest.raises(LayerPruneError, match="unknown --heal 'nope'"):
        check_heal("linear+nope")
    base, model, report = pruned()
    ids, held = markov_ids(16), markov_ids(8, seed=9)
    alone = copy.deepcopy(model)
    first = heal(alone, "linear", ids, base_model=base, report=report, eval_ids=held, **QUIET)
    record = heal(model, "linear+distill", ids, base_model=base, report=report, eval_ids=held, steps=10,
                  learning_rate=3e-3, **QUIET)
    assert record["method"] == "linear+distill" and [s["method"] for s in record["stages"]] == ["linear", "distill"]
    assert record["stages"][0]["loss_after"] == first["loss_after"]  # the first stage is exactly `linear` alone
    assert record["loss_before"] == first["loss_before"] and record["loss_after"] == record["stages"][1]["loss_after"]
    assert record["stages"][1]["kd_after"] < record["stages"][1]["kd_before"] and len(record["losses"]) == 10


def test_chain_in_the_pipeline_stage_and_the_card(tmp_path):
    from hf_layerprune.card import _citations, _tags

    base, model, report = pruned()
    recipe = Recipe(model="tiny", drop=2, heal="linear+lora", calibration="self", calibration_samples=6, seq_len=16,
                    heal_steps=2, lora_rank=4)
    record = heal_for_recipe(model, None, recipe, report, base_model=base, **QUIET)[0].to_dict()
    assert record["data"]["samples"] == max(6, 2 * 4) + 4 and record["stages"][1]["lora_rank"] == 4
    report = Report.from_dict({**report, "healing": record, "recipe": {"heal": "linear+lora"}})
    assert {"linear-compensation", "lora"} <= set(_tags(report))
    assert {"replaceme", "lora"} <= {c["key"] for c in _citations(report)}
    assert_stock_reload(model, tmp_path)


def test_a_correction_that_raises_the_held_out_loss_is_undone(monkeypatch):
    from hf_layerprune.healing import compensation

    base, model, report = pruned()
    harmful = lambda ctx, site, target, options, *, mode: compensation.Correction(  # noqa: E731
        site.path, delta=torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3)
    monkeypatch.setattr(compensation, "fit_site", harmful)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = heal(model, "linear", markov_ids(8), base_model=base, report=report, eval_ids=markov_ids(4, seed=9), **QUIET)
    assert record["reverted"] and record["loss_after_fit"] > record["loss_before"] == record["loss_after"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    kept = heal(model, "linear:keep_if_better=false", markov_ids(8), base_model=base, report=report,
                eval_ids=markov_ids(4, seed=9), **QUIET)
    assert "reverted" not in kept and kept["loss_after"] > kept["loss_before"]
