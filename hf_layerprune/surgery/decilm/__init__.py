"""Nemotron-NAS ("DeciLM") layout for sub-layer pruned models: our config and modeling files.

The two modules are copied verbatim into every exported checkpoint and loaded there through `auto_map`
(`trust_remote_code=True`); importing them from here is for export and tests.
"""

from hf_layerprune.surgery.decilm.configuration_decilm import DeciLMConfig, ffn_mult_to_intermediate_size
from hf_layerprune.surgery.decilm.modeling_decilm import DeciLMForCausalLM, DeciLMModel

__all__ = ["DeciLMConfig", "DeciLMForCausalLM", "DeciLMModel", "ffn_mult_to_intermediate_size"]
