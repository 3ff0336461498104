"""The 70B path's last step: the pruned bf16 checkpoint written from the original shards with LoRA adapters
merged there, one tensor in memory at a time, never the bf16 model.

Scoring and QLoRA healing run on a 4-bit copy (what fits one 80 GB GPU for a 70B model); the adapter trained there
is merged into the original-precision weights (never into dequantized 4-bit ones). ``write_merged`` does it on disk:
``surgery.prune_checkpoint`` copies the kept tensors' bytes, then each adapted weight is read back, merged exactly
as peft's ``merge_and_unload`` does (``W += (B @ A) * scaling``, in fp32 on the CPU for half-precision adapters,
added in place) and written over its own bytes (same dtype, same size). Peak memory: one weight and its factors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from hf_layerprune.runtime.errors import StageError, UnsupportedModel
from hf_layerprune.surgery.layers import checkpoint_files, prune_checkpoint, read_safetensors_header

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def lora_factors(adapter_state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{checkpoint key of the adapted weight (pruned numbering): (A, B)} from a peft adapter state dict."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in adapter_state.items():
        m = _LORA_KEY.match(key)
        if not m:
            raise StageError(f"not a LoRA weight: {key}")
        pairs.setdefault(m["module"] + ".weight", {})[m["which"]] = value
    missing = [k for k, v in pairs.items() if set(v) != {"A", "B"}]
    if missing:
        raise StageError(f"LoRA factors without their pair: {missing[:3]}")
    return {k: (v["A"], v["B"]) for k, v in pairs.items()}


def lora_scaling(config) -> float:
    """peft's scaling of a LoraConfig: alpha / r, or alpha / sqrt(r) with rslora."""
    return config.lora_alpha / (config.r ** 0.5 if getattr(config, "use_rslora", False) else config.r)


@torch.no_grad()
def merge_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """`weight` + (B @ A) * scaling, in place, as peft's Linear.get_delta_weight + merge (unsafe) computes it."""
    cast = weight.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16)
    delta = (b.float() @ a.float() if cast else b @ a) * scaling
    if cast:
        delta = delta.to(a.dtype)
    weight += delta
    return weight


def write_merged(src: str | Path, dst: str | Path, removed: list[int], adapter_state: dict[str, torch.Tensor],
                 scaling: float, *, max_shard_size: int | str = "5GB") -> dict[str, Any]:
    """Write the pruned checkpoint of `src` into empty directory `dst` with the LoRA adapter (keys in the pruned
    model's numbering, as peft saves them) merged into its weights; returns prune_checkpoint's summary and the
    merged keys. Tensors are read and written one at a time (memory: one weight)."""
    summary = prune_checkpoint(src, dst, removed, max_shard_size=max_shard_size)
    factors = lora_factors(adapter_state)
    where: dict[str, tuple[Path, dict, int]] = {}
    for path in checkpoint_files(Path(dst)):
        header, start = read_safetensors_header(path)
        for key, info in header.items():
            if key != "__metadata__":
                where[key] = (path, info, start)
    unknown = sorted(set(factors) - set(where))
    if unknown:
        raise StageError(f"the adapter names weights the pruned checkpoint does not have: {unknown[:3]}")
    for key, (a, b) in factors.items():
        path, info, start = where[key]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise UnsupportedModel(f"cannot merge into {key}: dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        with open(path, "r+b") as f:
            f.seek(start + begin)
            weight = torch.frombuffer(bytearray(f.read(end - begin)), dtype=dtype).reshape(info["shape"])
            merge_weight(weight, a, b, scaling)
            f.seek(start + begin)
            f.write(weight.contiguous().view(torch.uint8).numpy().tobytes())
    summary["merged"] = sorted(factors)
    return summary
