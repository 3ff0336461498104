"""Exact layer surgery on tiny random models of all ten families (in memory and on disk)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from hf_layerprune.surgery.layers import kept_layers, prune_checkpoint, remove_layers
from tiny_models import FAMILIES, sample_ids, skipped_reference_logits, tiny_model

REMOVED = [0, 3, 5]  # first, a middle one and the last of 6 layers


def layer_kinds(model):
    """What each decoder layer is: attention kind (sliding window or not) and MLP class."""
    layers = model.model.decoder.layers if model.config.model_type == "opt" else model.model.layers
    kinds = []
    for layer in layers:
        attn = layer.self_attn
        kinds.append((getattr(attn, "sliding_window", None), type(getattr(layer, "mlp", None)).__name__))
    return kinds


def expected_config_lists(config, kept):
    """Per-layer lists the pruned config must hold, derived from the original config directly."""
    out = {}
    if getattr(config, "layer_types", None) is not None:
        out["layer_types"] = [config.layer_types[i] for i in kept]
    return out


def save_all_tensors(directory):
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


@pytest.mark.parametrize("family", FAMILIES)
def test_in_memory_surgery_is_exact_and_reloads_cleanly(family, tmp_path):
    model = tiny_model(family)
    ids = sample_ids()
    reference = skipped_reference_logits(model, REMOVED, ids)
    kinds_before = layer_kinds(model)
    kept = kept_layers(REMOVED, 6)
    expected_lists = expected_config_lists(model.config, kept)

    remove_layers(model, REMOVED)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    assert model.config.num_hidden_layers == 3
    assert layer_kinds(model) == [kinds_before[i] for i in kept]

    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float32)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.config.num_hidden_layers == 3
    for name, value in expected_lists.items():
        assert getattr(reloaded.config, name) == value
    assert layer_kinds(reloaded) == [kinds_before[i] for i in kept]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, use_cache=False).logits, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_cache_matches_without(family, tmp_path):
    model = tiny_model(family)
    remove_layers(model, REMOVED)
    ids = sample_ids(batch=1, length=6)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    for m in (model, _reload(model, tmp_path)):
        with torch.no_grad():
            cached = m.generate(ids, use_cache=True, **kwargs)
            uncached = m.generate(ids, use_cache=False, **kwargs)
        assert torch.equal(cached, uncached)


def _reload(model, path):
    model.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_on_disk_and_in_memory_paths_give_identical_tensors(family, tmp_path):
    model = tiny_model(family)
    src, mem, disk = tmp_path / "src", tmp_path / "mem", tmp_path / "disk"
    model.save_pretrained(src)
    disk.mkdir()
    info = prune_checkpoint(src, disk, REMOVED)
    assert info["kept_layers"] == [1, 2, 4]
    remove_layers(model, REMOVED)
    model.save_pretrained(mem)

    a, b = save_all_tensors(mem), save_all_tensors(disk)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        assert a[key].contiguous().view(torch.uint8).equal(b[key].contiguous().view(torch.uint8)), key
    cfg_mem = json.loads((mem / "config.json").read_text())
    cfg_disk = json.loads((disk / "config.json").read_text())
    cfg_mem.pop("transformers_version", None), cfg_disk.pop("transformers_version", None)
    assert cfg_mem == cfg_disk
    _, info = AutoModelForCausalLM.from_pretrained(disk, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_on_disk_sharded_output_and_tied_embeddings(tmp_path):
    model = tiny_model("llama", tie_word_embeddings=True)
    src, disk = tmp_path / "src", tmp_path / "disk"
    model.save_pretrained(src)
    disk.mkdir()
    info = prune_checkpoint(src, disk, [1, 2], max_shard_size="20KB")
    assert info["shards"] > 1
    index = json.loads((disk / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    assert all((disk / shard).exists() for shard in index["weight_map"].values())
    reloaded, info = AutoModelForCausalLM.from_pretrained(disk, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    ids = sample_ids()
    reference = skipped_reference_logits(model, [1, 2], ids)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference, atol=1e-5, rtol=1e-5)


def test_in_memory_tied_embeddings_stay_tied():
    model = tiny_model("qwen3", tie_word_embeddings=True)
    remove_layers(model, [2])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
