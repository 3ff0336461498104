"""The Architecture record and its registry.

An Architecture says, for one `model_type`, where the decoder layers live, the names of their attention and
MLP sub-modules (and the module whose output is the residual update of each), the final norm, and how every
per-layer config field is rewritten when layers go:

- ``sliced``: per-layer lists (``layer_types``) keep the entries of the kept layers;
- ``remapped``: lists of layer indices (``mlp_only_layers``) keep the kept ones, renumbered;
- ``recounted``: "the first N layers" counts (``max_window_layers``) become the number of kept layers below N;
- ``expand``: turns a pattern or step (``decoder_sparse_step``) into explicit lists *before* slicing, so that
  kept layers keep their kind (sliding/full, dense/sparse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from hf_layerprune.runtime.errors import UnsupportedArchitecture
from hf_layerprune.runtime.registry import Registry

# Fields every family may carry; rewritten whenever present (transformers 5 validates them against the depth).
GENERIC_SLICED = ("layer_types", "mlp_layer_types", "no_rope_layers")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    layers: str = "model.layers"  # path of the ModuleList of decoder layers in *ForCausalLM
    attention: str = "self_attn"  # attention sub-module, relative to a decoder layer
    mlp: str = "mlp"  # MLP sub-module (the whole feed-forward branch), relative to a decoder layer
    attention_out: str = "self_attn"  # module whose output is the attention residual update
    mlp_out: str = "mlp"  # module whose output is the MLP residual update
    final_norm: str = "model.norm"
    embed: str = "model.embed_tokens"
    sliced: tuple[str, ...] = ()
    remapped: tuple[str, ...] = ()
    recounted: tuple[str, ...] = ()
    expand: Callable[[Any], dict[str, Any]] | None = None
    mlp_bias_field: str | None = "mlp_bias"  # config flag that gives the MLP output projection a bias
    down_proj: str = "mlp.down_proj"  # last linear of the MLP branch (closed-form healers fuse into it)
    lora_targets: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")  # the MLP's linears (`--heal lora`'s default)
    tied_by_default: bool = False  # transformers' default `tie_word_embeddings` for the family (a config.json may omit it)
    gguf_arch: str | None = None  # gguf's MODEL_ARCH name when a transformers model of the family exports to GGUF
    gguf_permuted: bool = False  # the export permutes Q/K as convert_hf_to_gguf.py's LlamaModel does
    sublayer_export: bool = False  # attention-only / MLP-only cuts export as DeciLM (Nemotron-NAS), vLLM's layout
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.model_type

    @property
    def summary(self) -> str:
        return self.notes

    @property
    def key_prefix(self) -> str:
        """Prefix of decoder-layer tensors in a checkpoint, e.g. ``model.layers.``."""
        return self.layers + "."

    def get_layers(self, model):
        return get_submodule(model, self.layers)

    def set_layers(self, model, layers) -> None:
        parent, _, name = self.layers.rpartition(".")
        setattr(get_submodule(model, parent), name, layers)


def get_submodule(root, path: str):
    module = root
    for part in filter(None, path.split(".")):
        module = getattr(module, part)
    return module


ARCHITECTURES: Registry[Architecture] = Registry("architecture", "model_type")
register = ARCHITECTURES.register


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES.names(aliases=True))


def get_architecture(config_or_type: Any) -> Architecture:
    model_type = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"unsupported architecture model_type={model_type!r}; supported: {', '.join(supported_model_types())}"
        )
    return ARCHITECTURES[model_type]
