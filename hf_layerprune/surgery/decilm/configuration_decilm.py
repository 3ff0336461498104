"""Configuration of the Nemotron-NAS ("DeciLM") layout, as written by hf-layerprune for sub-layer pruned models.

Each decoder block has its own entry in `block_configs`:

    {"attention": {"no_op": bool, "replace_with_linear": bool, "n_heads_in_group": int},
     "ffn": {"no_op": bool, "replace_with_linear": bool, "ffn_mult": float}}

A no-op sub-layer has no weights and is skipped (the residual passes through). `n_heads_in_group` is the number of
query heads per KV head. `ffn_mult` gives the MLP width through `ffn_mult_to_intermediate_size`; an `ffn` entry may
carry `intermediate_size` instead (used when no `ffn_mult` reproduces the width; vLLM reads it too).

The sections are exposed as attributes (`config.block_configs[i].attention.no_op`), which is how vLLM's
`nemotron_nas.py` reads them, and serialised back to plain dicts. This file is copied next to the weights and loaded
through `auto_map` with `trust_remote_code=True`; it must stay self-contained (only `transformers` imports).
"""

from types import SimpleNamespace

from transformers import PretrainedConfig


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's rule (the one vLLM applies): int(2 * ffn_mult * hidden_size / 3), rounded up to a multiple of 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return -(-size // 256) * 256


def _to_namespace(value):
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _to_namespace(v) for k, v in value.items()})
    return value


def _to_plain(value):
    if isinstance(value, SimpleNamespace):
        return {k: _to_plain(v) for k, v in vars(value).items()}
    return value


class DeciLMConfig(PretrainedConfig):
    model_type = "nemotron-nas"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        rope_parameters=None,
        rope_theta=None,
        rope_scaling=None,
        attention_bias=False,
        qkv_bias=None,
        mlp_bias=False,
        attention_dropout=0.0,
        sliding_window=None,
        layer_types=None,
        block_configs=None,
        intermediate_size=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.attention_bias = attention_bias  # bias on o_proj (and on q/k/v unless qkv_bias says otherwise)
        self.qkv_bias = attention_bias if qkv_bias is None else qkv_bias  # Qwen2: q/k/v biased, o_proj not
        self.mlp_bias = mlp_bias
        self.attention_dropout = attention_dropout
        self.sliding_window = sliding_window
        # No single MLP width: each block has its own. Stock Llama/Mistral configs reject `null` here, so loading
        # this checkpoint with a stock class fails loudly instead of silently re-creating the removed sub-layers.
        self.intermediate_size = intermediate_size

        if rope_parameters is None:
            rope_parameters = dict(rope_scaling or {})
            rope_parameters.setdefault("rope_type", rope_parameters.pop("type", "default"))
            rope_parameters.setdefault("rope_theta", rope_theta if rope_theta is not None else 10000.0)
        self.rope_parameters = dict(rope_parameters)
        self.rope_theta = self.rope_parameters.get("rope_theta")  # flat copy for readers of the older layout

        if block_configs is None:  # an arbitrary dense default; exported checkpoints always list their blocks
            block_configs = [
                {"attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": 1},
                 "ffn": {"no_op": False, "replace_with_linear": False, "ffn_mult": 4.0}}
            ] * num_hidden_layers
        self.block_configs = [_to_namespace(b) if isinstance(b, dict) else b for b in block_configs]
        if len(self.block_configs) != num_hidden_layers:
            raise ValueError(f"num_hidden_layers={num_hidden_layers} but {len(self.block_configs)} block_configs")
        if layer_types is None:
            kind = "full_attention" if sliding_window is None else "sliding_attention"
            layer_types = [kind] * num_hidden_layers
        self.layer_types = list(layer_types)

        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def block_intermediate_size(self, block_idx: int) -> int:
        ffn = self.block_configs[block_idx].ffn
        if getattr(ffn, "ffn_mult", None) is not None:  # the same precedence as vLLM
            return ffn_mult_to_intermediate_size(ffn.ffn_mult, self.hidden_size)
        return ffn.intermediate_size

    def to_dict(self):
        output = super().to_dict()
        output["block_configs"] = [_to_plain(b) for b in self.block_configs]
        return output


__all__ = ["DeciLMConfig", "ffn_mult_to_intermediate_size"]
