"""Sub-layer pruning exported in the Nemotron-NAS (DeciLM) layout, loaded back with trust_remote_code.

The reference is always the *original* stock model run with the same sub-layers zeroed by hooks
(`skip_sublayers`), never the exported code itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers.dynamic_module_utils as dynamic_module_utils
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hf_layerprune.runtime.errors import LayerPruneError
from hf_layerprune.surgery.sublayer import (
    AUTO_MAP,
    export_decilm,
    ffn_mult_for,
    skip_sublayers,
    supported_for_sublayer,
)
from tiny_models import sample_ids, tiny_model

ATOL = 1e-5
# Layer 3 loses both sub-layers (dropped whole); 1 keeps only its MLP, 2 only its attention.
REMOVED_ATTENTION = [1, 3]
REMOVED_MLP = [2, 3]
FAMILIES = {
    "llama": dict(intermediate_size=256),  # a multiple of 256: written as ffn_mult
    "mistral": dict(sliding_window=5),  # shorter than the prompts: the window matters
    "qwen2": dict(),  # q/k/v bias; layer 3 of 4 slides (window 8)
}


@pytest.fixture(scope="session")
def modules_cache(tmp_path_factory):
    """Remote code is copied into HF_MODULES_CACHE; keep it in a temp dir (one per process: transformers
    cannot switch it once `transformers_modules` is imported)."""
    if "transformers_modules" in sys.modules:
        yield  # already set up by an earlier user in this process
        return
    path = str(tmp_path_factory.mktemp("hf_modules"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_MODULES_CACHE", path)
        mp.setattr(dynamic_module_utils, "HF_MODULES_CACHE", path)
        yield


def load(directory, **kwargs):
    return AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, **kwargs).eval()


def reference_logits(model, ids, removed_attention, removed_mlp):
    with skip_sublayers(model, removed_attention, removed_mlp), torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory, modules_cache):
    family = request.param
    model = tiny_model(family, num_layers=4, **FAMILIES[family])
    out = tmp_path_factory.mktemp(f"decilm_{family}") / "out"
    summary = export_decilm(model, REMOVED_ATTENTION, REMOVED_MLP, out)
    return family, model, out, summary


# ------------------------------------------------------------------------------------------ behaviour


def test_logits_match_original_with_sublayers_skipped(exported):
    _, model, out, _ = exported
    pruned, info = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    assert type(pruned).__name__ == "DeciLMForCausalLM"
    assert type(pruned).__module__.startswith("transformers_modules.")  # the copy shipped in the checkpoint
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    ids = sample_ids(length=12)
    expected = reference_logits(model, ids, REMOVED_ATTENTION, REMOVED_MLP)
    with torch.no_grad():
        got = pruned.eval()(ids, use_cache=False).logits
        original = model(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert (original - expected).abs().max() > 1e-2  # the skipped sub-layers did matter


def test_generate_with_cache_equals_without_and_reference(exported):
    _, model, out, summary = exported
    pruned = load(out)
    ids = sample_ids(length=10)
    cached = pruned.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, return_dict_in_generate=True)
    uncached = pruned.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached.sequences, uncached)
    assert len(cached.past_key_values.layers) == summary["kept_attention"] == 2
    with skip_sublayers(model, REMOVED_ATTENTION, REMOVED_MLP):
        reference = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(uncached, reference)


def test_kv_cache_has_one_layer_per_kept_attention(exported):
    family, _, out, _ = exported
    pruned = load(out)
    with torch.no_grad():
        first = pruned(sample_ids(length=6), use_cache=True)
    cache = first.past_key_values
    kept = [b for b in pruned.config.block_configs if not b.attention.no_op]
    assert len(cache.layers) == len(kept) == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers if layer.has_attention] == [0, 1]
    blocks_and_types = zip(pruned.config.block_configs, pruned.config.layer_types)
    expected_sliding = [t == "sliding_attention" for b, t in blocks_and_types if not b.attention.no_op]
    assert cache.is_sliding == expected_sliding
    if family == "mistral":
        assert all(cache.is_sliding)


def test_layer_with_both_removed_is_dropped(exported):
    _, model, out, summary = exported
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    assert summary["removed_layers"] == [3]
    assert [b["source_layer"] for b in summary["blocks"]] == [0, 1, 2]
    assert summary["block_configs"] == ["attn+mlp", "mlp", "attn"]
    assert summary["kv_cache_bytes_per_token"] == {"before": 2 * 2 * 8 * 4 * 4, "after": 2 * 2 * 8 * 4 * 2}
    keys = weight_shapes(out)
    assert not any(k.startswith("model.layers.3.") for k in keys)
    for gone in ("1.self_attn.q_proj.weight", "1.input_layernorm.weight", "2.mlp.up_proj.weight",
                 "2.post_attention_layernorm.weight"):
        assert f"model.layers.{gone}" not in keys
    # block 1 is source layer 1's MLP with its norm, unchanged
    state = model.state_dict()
    with safe_open(next(out.glob("*.safetensors")), "pt") as f:
        for name in ("mlp.down_proj.weight", "post_attention_layernorm.weight"):
            torch.testing.assert_close(f.get_tensor(f"model.layers.1.{name}"), state[f"model.layers.1.{name}"])


def test_checkpoint_files_and_auto_map(exported):
    _, _, out, _ = exported
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["architectures"] == ["DeciLMForCausalLM"]
    for name in ("configuration_decilm.py", "modeling_decilm.py"):
        assert (out / name).read_text() == (Path(__file__).parents[1] / "hf_layerprune" / "surgery" / "decilm" / name).read_text()
    assert "from .configuration_decilm import DeciLMConfig" in (out / "modeling_decilm.py").read_text()
    assert (out / "generation_config.json").exists()


# ------------------------------------------------------------------------------------------ vLLM's view


def vllm_intermediate_size(ffn_mult: float, hidden: int) -> int:
    """vllm/model_executor/models/nemotron_nas.py: _ffn_mult_to_intermediate_size + _find_multiple(n, 256)."""
    n = int(2 * ffn_mult * hidden / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


def vllm_expected_weights(config: dict) -> dict[str, tuple[int, ...]]:
    """The HF-named tensors vLLM's DeciLMForCausalLM allocates for this config.json, with their shapes.

    Mirrors the reads of nemotron_nas.py (DeciLMDecoderLayer / DeciModel / DeciLMForCausalLM) and of vLLM's
    ModelConfig for model_type "nemotron-nas" (KV heads from the first block whose attention is not a no-op).
    """
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    hidden, heads, vocab = config["hidden_size"], config["num_attention_heads"], config["vocab_size"]
    head_dim = config.get("head_dim") or hidden // heads
    attention_bias = config.get("attention_bias", False) or config.get("bias", False)
    qkv_bias = config["qkv_bias"] if "qkv_bias" in config else attention_bias
    assert config["hidden_act"] == "silu"  # vLLM's LlamaMLP accepts nothing else
    assert len(config["block_configs"]) == config["num_hidden_layers"]
    weights = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        weights["lm_head.weight"] = (vocab, hidden)
    kv_heads_per_block = []
    for i, block in enumerate(config["block_configs"]):
        attention, ffn, prefix = block["attention"], block["ffn"], f"model.layers.{i}."
        assert {"no_op", "replace_with_linear"} <= attention.keys() and {"no_op", "replace_with_linear"} <= ffn.keys()
        assert not attention["replace_with_linear"] and not ffn["replace_with_linear"]
        if not attention["no_op"]:
            assert heads % attention["n_heads_in_group"] == 0
            kv = heads // attention["n_heads_in_group"]
            kv_heads_per_block.append(kv)
            weights[prefix + "input_layernorm.weight"] = (hidden,)
            for name, rows in (("q", heads), ("k", kv), ("v", kv)):
                weights[prefix + f"self_attn.{name}_proj.weight"] = (rows * head_dim, hidden)
                if qkv_bias:
                    weights[prefix + f"self_attn.{name}_proj.bias"] = (rows * head_dim,)
            weights[prefix + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
            if attention_bias:
                weights[prefix + "self_attn.o_proj.bias"] = (hidden,)
        if not ffn["no_op"]:
            size = vllm_intermediate_size(ffn["ffn_mult"], hidden) if "ffn_mult" in ffn else ffn["intermediate_size"]
            weights[prefix + "post_attention_layernorm.weight"] = (hidden,)
            weights[prefix + "mlp.gate_proj.weight"] = (size, hidden)
            weights[prefix + "mlp.up_proj.weight"] = (size, hidden)
            weights[prefix + "mlp.down_proj.weight"] = (hidden, size)
    assert kv_heads_per_block, "vLLM: Couldn't determine number of kv heads"
    assert not config["block_configs"][0]["attention"]["no_op"], "vLLM's first block needs attention (residual)"
    return weights


def weight_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in directory.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def test_config_and_weights_read_the_way_vllm_does(exported):
    family, model, out, _ = exported
    config = json.loads((out / "config.json").read_text())
    assert weight_shapes(out) == vllm_expected_weights(config)
    for block in config["block_configs"]:
        if not block["ffn"]["no_op"]:  # the exported width round-trips to the source's
            ffn = block["ffn"]
            if "ffn_mult" in ffn:
                assert vllm_intermediate_size(ffn["ffn_mult"], config["hidden_size"]) == model.config.intermediate_size
            else:
                assert ffn["intermediate_size"] == model.config.intermediate_size
    assert ("ffn_mult" in config["block_configs"][0]["ffn"]) == (family == "llama")
    assert config["qkv_bias"] == (family == "qwen2") and config["attention_bias"] is False
    assert config["intermediate_size"] is None  # per block only
    assert len(config["layer_types"]) == config["num_hidden_layers"]
    if family == "mistral":
        assert config["sliding_window"] == 5 and set(config["layer_types"]) == {"sliding_attention"}


def test_config_class_gives_attribute_access_like_vllm_expects(exported, modules_cache):
    from transformers import AutoConfig

    _, _, out, _ = exported
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    blocks = config.block_configs
    assert [b.attention.no_op for b in blocks] == [False, True, False]
    assert [b.ffn.no_op for b in blocks] == [False, False, True]
    assert blocks[0].attention.n_heads_in_group == 2
    # vLLM picks `ffn.intermediate_size` exactly when `hasattr(ffn, "ffn_mult")` is false
    assert hasattr(blocks[0].ffn, "ffn_mult") != hasattr(blocks[0].ffn, "intermediate_size")
    saved = json.loads((out / "config.json").read_text())
    assert json.loads(config.to_json_string())["block_configs"] == saved["block_configs"]


# vllm/transformers_utils/model_arch_config_convertor.py (ee92a6f3): what vLLM derives from the loaded config object
VLLM_MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                     "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
VLLM_KV_KEYS = ("n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num", "num_attention_groups")
VLLM_EXPERT_KEYS = ("num_experts", "moe_num_experts", "n_routed_experts", "num_local_experts", "num_experts_per_tok",
                    "num_experts_per_token", "top_k_experts", "moe_topk", "moe_top_k")


def test_config_object_reads_like_vllms_arch_convertor(exported, modules_cache):
    """ModelArchConfigConvertorBase + NemotronNasModelArchConfigConvertor, field by field, on the config class that
    vLLM loads (the shipped configuration_decilm.py, through AutoConfig with trust_remote_code)."""
    from transformers import AutoConfig

    _, model, out, _ = exported
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    source = model.config
    assert config.model_type == "nemotron-nas" and config.architectures == ["DeciLMForCausalLM"]
    # get_total_num_kv_heads (nemotron-nas): the first block whose attention is not a no-op
    first = next(b for b in config.block_configs if not b.attention.no_op)
    assert config.num_attention_heads // first.attention.n_heads_in_group == source.num_key_value_heads
    # get_head_size: head_dim when set and > 0
    assert config.head_dim == (getattr(source, "head_dim", None) or source.hidden_size // source.num_attention_heads)
    # derive_max_model_len_and_key: the smallest of these keys wins, so none but max_position_embeddings may be set
    present = {k: getattr(config, k) for k in VLLM_MAX_LEN_KEYS if getattr(config, k, None) is not None}
    assert present == {"max_position_embeddings": source.max_position_embeddings}
    # no expert count anywhere (get_num_experts, get_num_experts_from_block_configs: no `block_type: moe`)
    assert not any(getattr(config, k, None) for k in VLLM_EXPERT_KEYS)
    assert not any(getattr(b, "block_type", "") == "moe" for b in config.block_configs)
    # the base convertor's KV-head keys are not consulted for nemotron-nas; whatever we keep must not contradict it
    assert all(getattr(config, k, None) in (None, source.num_key_value_heads) for k in VLLM_KV_KEYS)
    assert (config.hidden_size, config.vocab_size, config.num_hidden_layers) == \
        (source.hidden_size, source.vocab_size, len(config.block_configs))
    assert not hasattr(config, "position_embedding_type")  # would switch off neox-style rope in DeciLMAttention
    assert config.rope_parameters["rope_theta"] == source.rope_parameters["rope_theta"]
    assert getattr(config, "logit_scale", 1.0) == 1.0


@pytest.mark.parametrize(
    "hidden,intermediate",
    [(4096, 14336), (4096, 11008), (2048, 8192), (3072, 8192), (576, 1536), (896, 4864), (3584, 18944), (32, 256)],
)
def test_ffn_mult_round_trips_real_widths(hidden, intermediate):
    mult = ffn_mult_for(intermediate, hidden)
    assert mult is not None and vllm_intermediate_size(mult, hidden) == intermediate


def test_widths_not_multiple_of_256_are_written_as_intermediate_size():
    assert ffn_mult_for(64, 32) is None and ffn_mult_for(5504, 2048) is None


# ------------------------------------------------------------------------------------------ loading errors


def test_loading_without_trust_remote_code_fails_clearly(exported):
    _, _, out, _ = exported
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(out)
    # the stock class must not silently rebuild the removed sub-layers from random weights
    with pytest.raises(Exception, match="intermediate_size"):
        LlamaForCausalLM.from_pretrained(out)


# ------------------------------------------------------------------------------------------ plans and families


def test_tied_embeddings_and_sharding(tmp_path, modules_cache):
    model = tiny_model("qwen2", num_layers=4, tie_word_embeddings=True)
    out = tmp_path / "tied"
    export_decilm(model, [2], [1], out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("*.safetensors"))) > 1
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert weight_shapes(out) == vllm_expected_weights(config)  # no lm_head.weight
    pruned = load(out)
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, reference_logits(model, ids, [2], [1]), atol=ATOL, rtol=0)


def test_unsupported_families_say_block_only():
    assert supported_for_sublayer("llama") and supported_for_sublayer("qwen2")
    for family in ("qwen3", "gemma2", "phi3", "opt"):
        assert not supported_for_sublayer(family)
    with pytest.raises(LayerPruneError, match="'qwen3' supports block only"):
        export_decilm(tiny_model("qwen3", num_layers=2), [0], [], "unused")


@pytest.mark.parametrize(
    "attention,mlp,message",
    [
        ([0], [], "first kept layer \\(0\\) has no attention"),
        ([0, 1, 2, 3], [], "every attention sub-layer is removed"),
        ([0, 1, 2, 3], [0, 1, 2, 3], "every sub-layer is removed"),
        ([4], [], "not a layer index 0..3"),
        ([1, 1], [], "repeated"),
    ],
)
def test_plans_that_cannot_be_served_are_refused(attention, mlp, message, tmp_path):
    with pytest.raises(LayerPruneError, match=message):
        export_decilm(tiny_model("llama", num_layers=4), attention, mlp, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_first_layer_removed_whole_is_fine(tmp_path, modules_cache):
    model = tiny_model("llama", num_layers=4)
    summary = export_decilm(model, [0, 2], [0], tmp_path / "out")
    assert summary["removed_layers"] == [0] and summary["block_configs"] == ["attn+mlp", "mlp", "attn+mlp"]
    ids = sample_ids()
    with torch.no_grad():
        got = load(tmp_path / "out")(ids).logits
    torch.testing.assert_close(got, reference_logits(model, ids, [0, 2], [0]), atol=ATOL, rtol=0)


def test_skip_sublayers_removes_its_hooks():
    model = tiny_model("llama", num_layers=3)
    ids = sample_ids()
    with torch.no_grad():
        before = model(ids).logits
        with skip_sublayers(model, [1], [2]):
            skipped = model(ids).logits
        after = model(ids).logits
    assert torch.equal(before, after) and not torch.allclose(before, skipped)


def test_prune_cli_attention_granularity_exports_decilm(tmp_path, modules_cache):
    from typer.testing import CliRunner

    from hf_layerprune.cli import app

    model = tiny_model("llama", num_layers=4)
    src = tmp_path / "src"
    model.save_pretrained(src)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(src), "--granularity", "attention", "--layers", "1,3", "-o", str(out), "--heal", "none", "--no-eval"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["removed_sublayers"] == {"attention": [1, 3], "mlp": []}
    assert report["removed_layers"] == [] and report["num_layers_after"] == 4
    assert report["export"]["trust_remote_code"] is True
    kv = report["export"]["kv_cache_bytes_per_token"]
    assert kv["after"] * 2 == kv["before"]
    pruned = load(out)
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, reference_logits(model, ids, [1, 3], []), atol=1e-5, rtol=1e-5)

    qwen3 = tiny_model("qwen3", num_layers=4)
    qwen3.save_pretrained(tmp_path / "qwen3")
    result = CliRunner().invoke(app, ["prune", str(tmp_path / "qwen3"), "--granularity", "mlp", "--layers", "1", "-o", str(tmp_path / "q"), "--heal", "none", "--no-eval"])
    assert result.exit_code == 2 and "block only" in result.stderr
    assert not (tmp_path / "q").exists()


def test_prune_cli_attention_drop_with_defaults(tmp_path, modules_cache):
    """`--granularity attention --drop N` alone: the sub-layer metric, no healing, layer 0's attention kept."""
    from typer.testing import CliRunner

    from hf_layerprune.cli import app
    from hf_layerprune.healing import DEFAULT_SUBLAYER_HEALER
    from hf_layerprune.scoring import DEFAULT_SUBLAYER_METRIC

    model = tiny_model("llama", num_layers=4)
    with torch.no_grad():  # make layer 0's attention the most skippable: the export must still keep it
        model.model.layers[0].self_attn.o_proj.weight.zero_()
    model.save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(tmp_path / "src"), "--granularity", "attention", "--drop", "2", "-o",
                                      str(out), "--no-eval", "--calibration-samples", "4", "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["recipe"]["metric"] == DEFAULT_SUBLAYER_METRIC and report["recipe"]["heal"] == DEFAULT_SUBLAYER_HEALER
    removed = report["removed_sublayers"]["attention"]
    assert len(removed) == 2 and 0 not in removed
    pruned = load(out)
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, reference_logits(model, ids, removed, []), atol=1e-5, rtol=1e-5)


def test_the_view_runs_as_the_exported_folder_on_the_same_tensors(tmp_path):
    """`decilm_view` is the exported model without a second copy: every parameter is the source's own storage, and
    its logits equal the folder's loaded with our classes, bit for bit."""
    from hf_layerprune.surgery.checkpoint import load_checkpoint
    from hf_layerprune.surgery.sublayer import decilm_view

    model = tiny_model("llama", num_layers=4).eval()
    export_decilm(model, REMOVED_ATTENTION, REMOVED_MLP, tmp_path / "out")
    view, _ = decilm_view(model, REMOVED_ATTENTION, REMOVED_MLP)
    owned = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in owned for p in view.parameters()) and not view.training
    ids = sample_ids()
    with torch.no_grad():
        assert torch.equal(view(ids).logits, load_checkpoint(tmp_path / "out")(ids).logits)


def test_an_unhealed_sublayer_cut_is_evaluated_without_reloading_it(tmp_path, monkeypatch):
    """The sub-layer route with `--heal none` (its default) evaluates the view on the loaded weights: the output
    folder is not read back into a second copy (issue 34's memory goal)."""
    from typer.testing import CliRunner

    from hf_layerprune.cli import app
    from hf_layerprune.flow import pipeline
    from test_evaluation import DATA, TEXT, TINY_TASK
    from tiny_models import save_word_tokenizer

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    (tmp_path / "text.raw").write_text(TEXT * 4, encoding="utf-8")
    src = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(src)
    save_word_tokenizer(src)
    monkeypatch.setattr(pipeline, "load_checkpoint", lambda *a, **k: pytest.fail("reloaded the output"))
    result = CliRunner().invoke(app, ["prune", str(src), "--granularity", "attention", "--metric", "bi", "--drop", "1",
                                      "--tasks", "tiny_mc", "--limit", "4", "--include-path", str(tasks),
                                      "--perplexity", str(tmp_path / "text.raw"), "--calibration-samples", "2",
                                      "--seq-len", "8", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "layerprune.json").read_text())
    assert report["granularity"] == "attention" and report["parameters_after"] < report["parameters_before"]
    assert report["evaluation"]["pruned"]["tiny_mc"] and report["evaluation"]["perplexity"]["pruned"]["perplexity"] > 0
