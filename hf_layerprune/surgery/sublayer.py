"""Sub-layer pruning: remove only the attention or only the MLP of chosen decoder layers.

The result cannot be expressed in the stock Llama/Mistral/Qwen2 classes, so it is exported in the Nemotron-NAS
("DeciLM") layout that vLLM serves natively (`DeciLMForCausalLM`, per-block `block_configs`), with our own
configuration and modeling files wired through `auto_map` for transformers (`trust_remote_code=True`).
See docs/sublayer.md for what vLLM reads and why the export refuses some plans.

- `export_decilm` writes the checkpoint from an in-memory model;
- `skip_sublayers` runs the *original* model with sub-layers skipped (hooks that zero their residual update):
  an independent reference for tests and a cheap way to score a plan before exporting it.
"""

from __future__ import annotations

import contextlib
import copy
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from hf_layerprune.architectures import ARCHITECTURES, get_architecture
from hf_layerprune.architectures.base import get_submodule
from hf_layerprune.surgery.decilm import DeciLMConfig, DeciLMForCausalLM, ffn_mult_to_intermediate_size
from hf_layerprune.runtime.errors import ConfigError, UnsupportedModel
from hf_layerprune.runtime.outputs import staging_dir

# Families whose decoder layer is exactly a Llama layer (RMSNorm, rotary attention with optional q/k/v bias, gated
# MLP): the only ones the DeciLM layout can describe. Qwen2's q/k/v bias maps to `qkv_bias` (vLLM reads it).
SUBLAYER_MODEL_TYPES = tuple(a.model_type for a in ARCHITECTURES.values() if a.sublayer_export)  # architectures/
DECILM_DIR = Path(__file__).parent / "decilm"
DECILM_FILES = ("configuration_decilm.py", "modeling_decilm.py")
AUTO_MAP = {
    "AutoConfig": "configuration_decilm.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_ATTENTION_PARTS = ("self_attn.", "input_layernorm.")  # input_layernorm belongs to attention
_MLP_PARTS = ("mlp.", "post_attention_layernorm.")  # post_attention_layernorm belongs to the MLP


def supported_for_sublayer(model_type: str) -> bool:
    return model_type in SUBLAYER_MODEL_TYPES


def check_sublayer_support(model_type: str) -> None:
    if not supported_for_sublayer(model_type):
        raise UnsupportedModel(
            f"sub-layer pruning (attention or MLP only) supports {', '.join(SUBLAYER_MODEL_TYPES)}; "
            f"model_type={model_type!r} supports block only (whole-layer) pruning"
        )


def _validate(indices: Iterable[int], num_layers: int, what: str) -> list[int]:
    indices = list(indices)
    for i in indices:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_layers:
            raise ConfigError(f"{what} index {i!r} is not a layer index 0..{num_layers - 1}")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"{what} indices are repeated: {indices}")
    return sorted(indices)


def plan_blocks(num_layers: int, removed_attention: Iterable[int], removed_mlp: Iterable[int]) -> list[dict]:
    """One entry per surviving block: its source layer and which sub-layers it keeps.

    Layers that lose both attention and MLP are dropped as whole layers. Raises ConfigError for plans the
    layout (or vLLM) cannot run: nothing left, no attention left, or a first block without attention.
    """
    attn = set(_validate(removed_attention, num_layers, "removed attention"))
    mlp = set(_validate(removed_mlp, num_layers, "removed MLP"))
    blocks = [
        {"source_layer": i, "attention": i not in attn, "mlp": i not in mlp}
        for i in range(num_layers)
        if i not in attn or i not in mlp
    ]
    if not blocks:
        raise ConfigError("every sub-layer is removed: at least one attention must stay")
    if not any(b["attention"] for b in blocks):
        raise ConfigError("every attention sub-layer is removed: keep at least one (vLLM sizes its KV cache on it)")
    if not blocks[0]["attention"]:
        raise ConfigError(
            f"the first kept layer ({blocks[0]['source_layer']}) has no attention: vLLM's nemotron_nas cannot run a "
            "first block whose attention is a no-op; keep its attention or remove the whole layer"
        )
    return blocks


def ffn_mult_for(intermediate_size: int, hidden_size: int) -> float | None:
    """The `ffn_mult` that DeciLM's rounding rule maps back to exactly `intermediate_size`, or None if none does.

    vLLM (and NVIDIA's code) compute int(2 * ffn_mult * hidden / 3) rounded *up* to a multiple of 256, so only
    widths that are multiples of 256 can be written as `ffn_mult`; the others are written as `intermediate_size`.
    """
    mult = 1.5 * intermediate_size / hidden_size
    return mult if ffn_mult_to_intermediate_size(mult, hidden_size) == intermediate_size else None


def _source_layer_types(config) -> list[str]:
    n = config.num_hidden_layers
    sliding = getattr(config, "sliding_window", None)
    if config.model_type != "mistral" and getattr(config, "layer_types", None) is not None:
        return list(config.layer_types)
    return ["sliding_attention" if sliding is not None else "full_attention"] * n  # Mistral: one global window


def build_decilm_config(config, blocks: list[dict]) -> DeciLMConfig:
    """The DeciLMConfig describing `blocks` (from `plan_blocks`) of a Llama/Mistral/Qwen2 `config`."""
    check_sublayer_support(config.model_type)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    mult = ffn_mult_for(config.intermediate_size, config.hidden_size)
    ffn_size = {"ffn_mult": mult} if mult is not None else {"intermediate_size": config.intermediate_size}
    block_configs = [
        {
            "attention": {"no_op": not b["attention"], "replace_with_linear": False}
            | ({"n_heads_in_group": heads // kv_heads} if b["attention"] else {}),
            "ffn": {"no_op": not b["mlp"], "replace_with_linear": False} | (ffn_size if b["mlp"] else {}),
        }
        for b in blocks
    ]
    layer_types = _source_layer_types(config)
    qwen2 = config.model_type == "qwen2"
    return DeciLMConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        rope_parameters=copy.deepcopy(config.rope_parameters),
        attention_bias=False if qwen2 else bool(getattr(config, "attention_bias", False)),
        qkv_bias=True if qwen2 else None,
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        attention_dropout=getattr(config, "attention_dropout", 0.0),
        sliding_window=getattr(config, "sliding_window", None),
        layer_types=[layer_types[b["source_layer"]] for b in blocks],
        block_configs=block_configs,
        auto_map=dict(AUTO_MAP),
    )


def decilm_state_dict(state_dict: dict[str, torch.Tensor], blocks: list[dict]) -> dict[str, torch.Tensor]:
    """Source weights renamed to the kept blocks, without the removed sub-layers' weights (norms included)."""
    new_index = {b["source_layer"]: (i, b) for i, b in enumerate(blocks)}
    out = {}
    for key, tensor in state_dict.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            out[key] = tensor
            continue
        layer, rest = int(m[1]), m[2]
        if layer not in new_index:
            continue
        new, block = new_index[layer]
        if (not block["attention"] and rest.startswith(_ATTENTION_PARTS)) or (
            not block["mlp"] and rest.startswith(_MLP_PARTS)
        ):
            continue
        out[f"model.layers.{new}.{rest}"] = tensor
    return out


def _describe(block: dict) -> str:
    return {(True, True): "attn+mlp", (True, False): "attn", (False, True): "mlp"}[block["attention"], block["mlp"]]


def kv_cache_bytes_per_token(config, num_attention_layers: int, dtype: torch.dtype) -> int:
    """2 (K and V) * n_kv_heads * head_dim * bytes per element * attention layers."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * kv_heads * head_dim * dtype.itemsize * num_attention_layers


def decilm_view(model, removed_attention: list[int], removed_mlp: list[int]):
    """(`model` without those sub-layers as our DeciLM model, its blocks): every kept tensor is `model`'s own (no
    copy), so the view must not be trained while `model` is still wanted, and it runs exactly as the exported folder
    loaded with our classes (in eval mode)."""
    source = model.config
    check_sublayer_support(source.model_type)
    blocks = plan_blocks(source.num_hidden_layers, list(removed_attention), list(removed_mlp))
    config = build_decilm_config(source, blocks)
    config.dtype = next(model.parameters()).dtype
    with torch.device("meta"):  # no second copy of the weights: the source tensors are assigned below
        pruned = DeciLMForCausalLM(config)
    pruned.load_state_dict(decilm_state_dict(model.state_dict(), blocks), strict=True, assign=True)
    if config.tie_word_embeddings:
        pruned.lm_head.weight = pruned.model.embed_tokens.weight
    if getattr(model, "generation_config", None) is not None:
        pruned.generation_config = copy.deepcopy(model.generation_config)
    # the rotary buffers are not in the state dict: made again, for real, where the weights are
    pruned.model.rotary_emb = type(pruned.model.rotary_emb)(config=config).to(next(model.parameters()).device)
    return pruned.eval(), blocks


def export_decilm(
    model,
    removed_attention: list[int],
    removed_mlp: list[int],
    output_dir,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `model` (a Llama/Mistral/Qwen2 *ForCausalLM) without the given sub-layers as a DeciLM checkpoint.

    Indices are 0-based layers of `model`. A layer in both lists is removed whole and the rest renumbered.
    The directory holds safetensors weights, config.json (`block_configs`, `auto_map`), generation_config.json
    and our two .py files; load it with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.
    Returns a summary (blocks, kept counts, KV-cache bytes per token before/after).
    """
    source = model.config
    removed_attention, removed_mlp = list(removed_attention), list(removed_mlp)
    pruned, blocks = decilm_view(model, removed_attention, removed_mlp)
    dtype = next(model.parameters()).dtype

    with staging_dir(output_dir, overwrite=overwrite) as tmp:
        pruned.save_pretrained(tmp, max_shard_size=max_shard_size)
        for name in DECILM_FILES:
            shutil.copyfile(DECILM_DIR / name, tmp / name)

    kept_attention = sum(b["attention"] for b in blocks)
    mult = ffn_mult_for(source.intermediate_size, source.hidden_size)
    return {
        "format": "nemotron-nas",
        "output_dir": str(output_dir),
        "source_model_type": source.model_type,
        "source_layers": source.num_hidden_layers,
        "removed_attention": sorted(removed_attention),
        "removed_mlp": sorted(removed_mlp),
        "removed_layers": sorted(set(removed_attention) & set(removed_mlp)),
        "blocks": blocks,
        "block_configs": [_describe(b) for b in blocks],
        "kept_attention": kept_attention,
        "kept_mlp": sum(b["mlp"] for b in blocks),
        "ffn_size_field": "intermediate_size" if mult is None else "ffn_mult",
        "kv_cache_bytes_per_token": {
            "before": kv_cache_bytes_per_token(source, source.num_hidden_layers, dtype),
            "after": kv_cache_bytes_per_token(source, kept_attention, dtype),
        },
    }


@contextlib.contextmanager
def skip_sublayers(model, removed_attention: Iterable[int] = (), removed_mlp: Iterable[int] = ()) -> Iterator[None]:
    """Run the unmodified `model` with the given attention / MLP sub-layers skipped.

    Forward hooks replace each skipped sub-layer's residual update with zeros, so the residual stream passes
    through unchanged (the sub-layer's own norm is skipped with it). Works for every registered family; the
    sub-layers still execute, so this is a reference, not a speed-up.
    """
    arch = get_architecture(model.config)
    layers = arch.get_layers(model)
    n = len(layers)
    targets = [get_submodule(layers[i], arch.attention_out) for i in _validate(removed_attention, n, "attention")]
    targets += [get_submodule(layers[i], arch.mlp_out) for i in _validate(removed_mlp, n, "MLP")]

    def zero_update(module, args, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]),) + output[1:]
        return torch.zeros_like(output)

    handles = [module.register_forward_hook(zero_update) for module in targets]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
