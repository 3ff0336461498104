"""The built-in families. Most are pure data; MoE families add one `expand` rule for their sparse step."""

from __future__ import annotations

from typing import Any

from hf_layerprune.architectures.base import Architecture, register


def expand_sparse_step(config: Any) -> dict[str, Any]:
    """Qwen-MoE: a layer is sparse iff `i not in mlp_only_layers and num_experts > 0 and (i+1) % step == 0`.

    Written out as the explicit list of dense layers with `decoder_sparse_step=1`, which the same rule reads
    identically, so slicing keeps every kept layer's kind.
    """
    step = int(getattr(config, "decoder_sparse_step", 1) or 1)
    mlp_only = set(getattr(config, "mlp_only_layers", None) or [])
    num_experts = getattr(config, "num_experts", 0) or 0
    n = config.num_hidden_layers
    if num_experts <= 0:
        return {}  # every layer is dense whatever the lists say
    dense = [i for i in range(n) if i in mlp_only or (i + 1) % step != 0]
    return {"mlp_only_layers": dense, "decoder_sparse_step": 1}


LLAMA_LIKE = dict(layers="model.layers", attention="self_attn", mlp="mlp")

register(Architecture("llama", **LLAMA_LIKE, gguf_arch="LLAMA", gguf_permuted=True, sublayer_export=True))
register(Architecture("mistral", **LLAMA_LIKE, notes="sliding_window is global", gguf_arch="LLAMA", gguf_permuted=True,
                      sublayer_export=True))
register(Architecture("phi3", **LLAMA_LIKE, mlp_bias_field=None, lora_targets=("gate_up_proj", "down_proj"), notes="fused qkv_proj / gate_up_proj; no MLP bias"))
register(
    Architecture(
        "qwen2",
        **LLAMA_LIKE,
        sliced=("layer_types",),
        recounted=("max_window_layers",),
        mlp_bias_field=None,
        notes="layer_types derived from max_window_layers is written explicitly",
        gguf_arch="QWEN2",
        sublayer_export=True,
    )
)
register(
    Architecture(
        "qwen3",
        **LLAMA_LIKE,
        sliced=("layer_types",),
        recounted=("max_window_layers",),
        mlp_bias_field=None,
        gguf_arch="QWEN3",
    )
)
register(
    Architecture(
        "gemma2",
        **LLAMA_LIKE,
        attention_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        sliced=("layer_types",),
        mlp_bias_field=None,
        tied_by_default=True,
        notes="alternating sliding/full layer_types; residual updates go through post-norms",
    )
)
register(
    Architecture(
        "gemma3_text",
        **LLAMA_LIKE,
        attention_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        sliced=("layer_types",),
        mlp_bias_field=None,
        tied_by_default=True,
        notes="layer_types expanded from sliding_window_pattern; rope per layer type",
    )
)
register(
    Architecture(
        "qwen2_moe",
        **LLAMA_LIKE,
        sliced=("layer_types",),
        remapped=("mlp_only_layers",),
        recounted=("max_window_layers",),
        expand=expand_sparse_step,
        mlp_bias_field=None,
        down_proj="",  # sparse MoE blocks have no single down_proj
    )
)
register(
    Architecture(
        "qwen3_moe",
        **LLAMA_LIKE,
        remapped=("mlp_only_layers",),
        expand=expand_sparse_step,
        mlp_bias_field=None,
        down_proj="",
    )
)
register(
    Architecture(
        "opt",
        layers="model.decoder.layers",
        attention="self_attn",
        mlp="fc2",  # OPT has no MLP module: fc1 -> act -> fc2 inside the decoder layer
        attention_out="self_attn",
        mlp_out="fc2",
        final_norm="model.decoder.final_layer_norm",
        embed="model.decoder.embed_tokens",
        mlp_bias_field=None,  # OPT's fc2 already has a bias
        down_proj="fc2",
        lora_targets=("fc1", "fc2"),
        tied_by_default=True,
        notes="layers at model.decoder.layers; fc1/fc2 instead of an mlp module",
    )
)
