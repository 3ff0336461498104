"""Nemotron-NAS ("DeciLM") decoder for transformers 5, written by hf-layerprune for sub-layer pruned models.

A block is a Llama decoder layer whose attention and/or MLP may be a no-op (per `config.block_configs`). A no-op
sub-layer owns no weights, not even its norm: `input_layernorm` belongs to attention, `post_attention_layernorm`
to the MLP, so the weight names are exactly those of the source Llama/Mistral/Qwen2 model minus the removed parts
(the layout vLLM's `nemotron_nas.py` loads).

The KV cache holds one layer per block *with* attention: each attention module's `layer_idx` is its compact
`kv_cache_idx`, not the block index. The building blocks (RMSNorm, rotary embedding, MLP, attention kernels,
masks, cache) are transformers' own, so this file follows the library's attention and cache interfaces.
"""

import inspect
from types import SimpleNamespace

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_decilm import DeciLMConfig

# transformers 5.24 renamed `past_key_values` to `cache` (argument of forward and of the mask helpers, and field of
# the model outputs). This file speaks both: `cache` inside, the library's own name at its boundaries.
_MASK_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
_OUTPUT_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


class DeciLMAttention(nn.Module):
    """Llama attention with this block's GQA group size; `layer_idx` is the compact KV-cache index."""

    def __init__(self, config: DeciLMConfig, block_idx: int, kv_cache_idx: int):
        super().__init__()
        attention = config.block_configs[block_idx].attention
        if getattr(attention, "replace_with_linear", False):
            raise NotImplementedError(f"block {block_idx}: replace_with_linear attention is not supported")
        self.config = config
        self.layer_idx = kv_cache_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = attention.n_heads_in_group
        num_kv_heads = config.num_attention_heads // attention.n_heads_in_group
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        is_sliding = config.layer_types[block_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if is_sliding else None

        hidden = config.hidden_size
        q_size, kv_size = config.num_attention_heads * self.head_dim, num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, q_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, hidden, bias=config.attention_bias)

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class DeciLMDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: DeciLMConfig, block_idx: int, kv_cache_idx: int | None):
        super().__init__()
        block = config.block_configs[block_idx]
        self.attention_type = config.layer_types[block_idx]
        self.has_attention = not block.attention.no_op
        self.has_mlp = not block.ffn.no_op
        if self.has_attention:
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = DeciLMAttention(config, block_idx, kv_cache_idx)
        if self.has_mlp:
            if getattr(block.ffn, "replace_with_linear", False):
                raise NotImplementedError(f"block {block_idx}: replace_with_linear ffn is not supported")
            mlp_config = SimpleNamespace(
                hidden_size=config.hidden_size,
                intermediate_size=config.block_intermediate_size(block_idx),
                hidden_act=getattr(block.ffn, "hidden_act", config.hidden_act),
                mlp_bias=config.mlp_bias,
            )
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = LlamaMLP(mlp_config)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        if self.has_attention:
            attn_output, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                cache=cache,
                **kwargs,
            )
            hidden_states = hidden_states + attn_output
        if self.has_mlp:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(PreTrainedModel):
    config: DeciLMConfig
    config_class = DeciLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeciLMDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": DeciLMDecoderLayer, "attentions": DeciLMAttention}


class DeciLMModel(DeciLMPreTrainedModel):
    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)

        # Compact KV-cache index over the blocks that keep attention (as vLLM's kv_cache_index / LLM-Drop do).
        self.kv_cache_layer_types = []
        layers = []
        for block_idx, block in enumerate(config.block_configs):
            kv_cache_idx = None
            if not block.attention.no_op:
                kv_cache_idx = len(self.kv_cache_layer_types)
                self.kv_cache_layer_types.append(config.layer_types[block_idx])
            layers.append(DeciLMDecoderLayer(config, block_idx, kv_cache_idx))
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def new_kv_cache(self) -> DynamicCache:
        """An empty DynamicCache with exactly one layer per kept attention (sliding layers where they slide)."""
        kv_config = PretrainedConfig(
            num_hidden_layers=len(self.kv_cache_layer_types),
            layer_types=list(self.kv_cache_layer_types),
            sliding_window=self.config.sliding_window,
        )
        return DynamicCache(config=kv_config)

    def _prepare_kv_cache(self, cache):
        if cache is None:
            return self.new_kv_cache()
        # `generate` builds DynamicCache(config) with one layer per *block*; while it is still empty, give it the
        # kept attention layers instead (in place, so that `generate` keeps using the same object).
        if isinstance(cache, DynamicCache) and cache.get_seq_length() == 0:
            if len(cache.layers) != len(self.kv_cache_layer_types):
                cache.layers = self.new_kv_cache().layers
        return cache

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache:
            cache = self._prepare_kv_cache(cache)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        if not isinstance(mask_mapping := attention_mask, dict):  # `generate` may have prepared it already
            mask_kwargs = dict(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{_MASK_CACHE_ARG: cache},
            )
            mask_mapping = {"full_attention": create_causal_mask(**mask_kwargs)}
            if "sliding_attention" in self.config.layer_types:
                mask_mapping["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask_mapping[layer.attention_type],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm(hidden_states),
            **{_OUTPUT_CACHE_FIELD: cache if use_cache else None},
        )


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{_OUTPUT_CACHE_FIELD: getattr(outputs, _OUTPUT_CACHE_FIELD)},
            attentions=outputs.attentions,
        )


__all__ = ["DeciLMForCausalLM", "DeciLMModel", "DeciLMPreTrainedModel"]
