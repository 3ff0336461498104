"""The 70B path's output: LoRA merged into the original bf16 shards on disk, one tensor at a time, equals
peft's merge_and_unload into the pruned model in memory, bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hf_layerprune.surgery.streamed_merge import lora_scaling, write_merged
from hf_layerprune.surgery.layers import checkpoint_files, remove_layers
from tiny_models import tiny_model

REMOVED = [2, 4]


def adapted(model, rank: int = 4):
    """`model` wrapped with a LoRA adapter on every linear module, its factors random (B is zero after init)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)
    return peft_model, config


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_streamed_merge_equals_in_memory_merge(tmp_path, dtype):
    from peft import get_peft_model_state_dict

    src = tmp_path / "src"
    tiny_model("llama", num_layers=6).to(dtype).save_pretrained(src, max_shard_size="40KB")  # several shards
    model = tiny_model("llama", num_layers=6).to(dtype)
    remove_layers(model, REMOVED)
    peft_model, config = adapted(model)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    merged = peft_model.merge_and_unload()
    want = {k: v for k, v in merged.state_dict().items()}

    dst = tmp_path / "dst"
    dst.mkdir()
    summary = write_merged(src, dst, REMOVED, state, lora_scaling(config), max_shard_size="40KB")
    got = {}
    for path in checkpoint_files(dst):
        got.update(load_file(path))
    assert set(got) == set(want) and summary["merged"]
    changed = 0
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        changed += key in summary["merged"]
    assert changed == 4 * 7  # every linear module of the 4 kept layers
    source = {}
    for path in checkpoint_files(src):
        source.update(load_file(path))
    key = summary["merged"][0]  # model.layers.0....: the same layer in the source
    assert not torch.equal(got[key], source[key])  # the merge did change it


def test_an_adapter_for_a_missing_weight_is_refused(tmp_path):
    from hf_layerprune.runtime.errors import LayerPruneError

    src = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    bad = {"base_model.model.model.layers.9.mlp.down_proj.lora_A.weight": torch.zeros(2, 64),
           "base_model.model.model.layers.9.mlp.down_proj.lora_B.weight": torch.zeros(32, 2)}
    with pytest.raises(LayerPruneError, match="does not have"):
        write_merged(src, dst, [1], bad, 1.0)


@pytest.mark.gpu
def test_qlora_adapter_merged_by_streaming_on_cuda(tmp_path):
    """4-bit NF4 copy on the GPU, LoRA trained there, merged into the bf16 shards by streaming: equals the merge
    of the same adapter into the bf16 pruned model in memory."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from hf_layerprune.runtime.third_party import allow_bitsandbytes

    if allow_bitsandbytes() is None:
        pytest.skip("needs bitsandbytes")
    from peft import get_peft_model_state_dict

    from hf_layerprune.healing.lora import merge_adapter, quantized_copy

    src = tmp_path / "src"
    tiny_model("llama", num_layers=6).to(torch.bfloat16).save_pretrained(src)
    model = tiny_model("llama", num_layers=6).to(torch.bfloat16)
    remove_layers(model, REMOVED)
    quantized = quantized_copy(model.cuda())
    peft_model, config = adapted(quantized)
    state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    reference = merge_adapter(model.cpu(), config, state)
    dst = tmp_path / "dst"
    dst.mkdir()
    write_merged(src, dst, REMOVED, state, lora_scaling(config))
    got = {}
    for path in checkpoint_files(dst):
        got.update(load_file(path))
    for key, value in reference.state_dict().items():
        assert torch.equal(got[key], value), key
