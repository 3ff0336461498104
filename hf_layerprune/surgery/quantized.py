"""4-bit NF4 models (bitsandbytes): the route for models larger than the device in 16-bit (`--load-in-4bit`).

Gromov et al. scored and healed Llama-2-70B on one 80 GB GPU this way: the model is loaded in 4-bit NF4 (double
quantization, bf16 compute), scored and cut there, healed with QLoRA on it in place (the adapter stays unmerged),
evaluated in 4-bit, and the output is written from the *original* shards with the adapter merged into their
16-bit weights one tensor at a time (streamed_merge.py): the 16-bit model is never held. bitsandbytes >= 0.48 also
runs NF4 forward and LoRA backward on the CPU (slowly), which is what the tests use.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_layerprune.runtime.errors import ConfigError, StageError
from hf_layerprune.runtime.third_party import allow_bitsandbytes


def check_available(what: str = "--load-in-4bit") -> None:
    """One line when bitsandbytes cannot quantize here: not installed, or no CUDA and no CPU backend."""
    if allow_bitsandbytes() is None:
        raise ConfigError(f"{what} needs bitsandbytes: pip install 'hf-layerprune[quantization]'")
    if torch.cuda.is_available():
        return
    try:  # the CPU backend (bitsandbytes >= 0.48) quantizes a CPU tensor; older builds need CUDA
        import bitsandbytes.functional as F

        F.quantize_4bit(torch.zeros(64, dtype=torch.bfloat16), quant_type="nf4")
    except Exception as exc:  # noqa: BLE001  any failure means: no 4-bit on this machine
        raise ConfigError(f"{what} needs a CUDA GPU or bitsandbytes >= 0.48 with its CPU backend "
                              f"({type(exc).__name__} here); use --heal lora on the CPU") from None


def config(compute_dtype: torch.dtype = torch.bfloat16):
    """transformers' BitsAndBytesConfig for NF4 with double quantization (QLoRA's settings)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def one_cpu_path(model):
    """Keep every 4-bit linear layer of `model` on bitsandbytes' portable CPU path; returns the model.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a `Linear4bit`'s weight, the first time the layer runs in
    eval mode without gradients, for a fused bf16 kernel (`_convert_weight_packed_for_cpu`). That path
    - crashes on shapes it cannot block (out_features not a multiple of 32, in_features not one of the blocksize:
      "shape '[32, 0]' is invalid" on small models),
    - computes in bf16 whatever compute dtype was chosen, so scores, losses and evaluations differ between CPUs,
    - is lossy: it rounds the double-quantized absmax to bf16, which its inverse does not undo, so a model scored
      in eval mode and then trained in place (`--load-in-4bit` + `qlora`) would train other weights than it scored,
      and the fused op has no backward.
    One arithmetic on every CPU matters more here than the fused kernel's speed; CUDA is unaffected."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def is_4bit(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def numel(parameter: torch.Tensor) -> int:
    """Elements of a parameter as the model uses it: a packed 4-bit weight counts its unpacked shape."""
    state = getattr(parameter, "quant_state", None)
    return int(state.shape.numel()) if state is not None else parameter.numel()


def count_parameters(model) -> int:
    """Parameters of the model as published: packed 4-bit weights unpacked, unmerged LoRA factors left out (they
    are merged into the weights they adapt)."""
    return sum(numel(p) for name, p in model.named_parameters() if ".lora_" not in name)


def unmerged_adapter(model) -> tuple[dict[str, torch.Tensor], float | None]:
    """The LoRA factors peft injected into `model` and left unmerged, keyed as peft saves them (`<module>.lora_A.
    weight`, module names of `model`), and their scaling; ({}, None) when there is none."""
    state: dict[str, torch.Tensor] = {}
    scalings: set[float] = set()
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or getattr(module, "merged", False):
            continue
        name = name.removeprefix("base_model.model.")
        for adapter in module.active_adapters:
            if adapter in lora_a:
                state[f"{name}.lora_A.weight"] = lora_a[adapter].weight.detach()
                state[f"{name}.lora_B.weight"] = lora_b[adapter].weight.detach()
                scalings.add(float(module.scaling[adapter]))
    if len(scalings) > 1:
        raise StageError(f"the adapter has several scalings {sorted(scalings)}; one rank and alpha are expected")
    return state, scalings.pop() if scalings else None


def describe(model) -> dict[str, Any]:
    """The report's record of how a 4-bit model was loaded."""
    quant = getattr(model.config, "quantization_config", None)
    compute = getattr(quant, "bnb_4bit_compute_dtype", None)
    return {"method": "bitsandbytes", "type": "nf4", "double_quant": bool(getattr(quant, "bnb_4bit_use_double_quant", True)),
            "compute_dtype": str(compute).replace("torch.", "") if compute is not None else None}
