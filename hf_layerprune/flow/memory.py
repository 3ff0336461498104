"""Peak memory per pipeline stage, and the pre-flight estimate that refuses a recipe which will not fit.

Measured: on CPU the process's peak resident set (Linux ``VmHWM``, reset per stage through
``/proc/self/clear_refs``; elsewhere the lifetime ``ru_maxrss``), on CUDA ``torch.cuda.max_memory_allocated``
(reset per stage). Stages nest (a nested stage's peak counts for its parent too).

Estimated (``estimate``), before the weights are loaded, from the config alone (parameters counted on the meta
device), the load dtype and the recipe: one copy of the weights (the base is a view over the pruned model,
base_view.py), plus what the copy-on-write of each healer copies, its trainer state, the calibration activations,
the evaluation's logits and the save buffer (safetensors serialises a shard in memory), plus the runtime's own
footprint. ``check_fits`` raises one ``Error:`` line naming the options that would fit.
"""

from __future__ import annotations

import os
import resource
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

GiB = 2**30
BUDGET_ENV = "HF_LAYERPRUNE_MEMORY_BUDGET"  # e.g. "20GiB": the budget the pre-flight check uses (default: the device's)
RUNTIME_BYTES = int(0.6 * GiB)  # python, torch, transformers and the trainer imported: RSS on CPU
EVAL_BYTES = int(0.15 * GiB)  # lm-eval and its task data
NF4_BYTES = 0.516  # bytes per weight of NF4 with double quantization: 4 bits + an 8-bit absmax per 64 (+ fp32 per 256)


def _vm_status(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    return _vm_status("VmRSS") or 0


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _cpu_peak() -> int:
    return _vm_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cuda() -> bool:
    """CUDA is in use: only a process that imported torch can have initialised it (no import here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False

    return torch.cuda.is_available() and torch.cuda.is_initialized()


@dataclass
class MemoryMeter:
    """Peak memory per named stage: ``with meter.stage("heal"): ...``; ``record()`` for the report."""

    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    _stack: list[dict[str, int]] = field(default_factory=list)

    def _peaks(self) -> dict[str, int]:
        peaks = {"rss": _cpu_peak()}
        if _cuda():
            import torch

            peaks["cuda"] = int(torch.cuda.max_memory_allocated())
        return peaks

    def _reset(self) -> None:
        _reset_cpu_peak()
        if _cuda():
            import torch

            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def _merge(into: dict[str, int], peaks: dict[str, int]) -> None:
        for key, value in peaks.items():
            into[key] = max(into.get(key, 0), value)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._stack:  # what the enclosing stage reached so far, before the reset
            self._merge(self._stack[-1], self._peaks())
        self._reset()
        self._stack.append({})
        try:
            yield
        finally:
            peaks = self._stack.pop()
            self._merge(peaks, self._peaks())
            self._merge(self.stages.setdefault(name, {}), peaks)
            if self._stack:
                self._merge(self._stack[-1], peaks)

    def record(self, weight_bytes: int | None = None) -> dict[str, Any]:
        """{"stages": {name: {"peak_rss_bytes", ["peak_cuda_bytes"]}}, "peak_rss_bytes", "weight_bytes",
        "peak_over_weights"}."""
        stages = {name: {f"peak_{k}_bytes": v for k, v in peaks.items()} for name, peaks in self.stages.items()}
        peak = max((p.get("rss", 0) for p in self.stages.values()), default=_cpu_peak())
        out: dict[str, Any] = {"stages": stages, "peak_rss_bytes": peak}
        cuda = [p["cuda"] for p in self.stages.values() if "cuda" in p]
        if cuda:
            out["peak_cuda_bytes"] = max(cuda)
        if weight_bytes:
            out["weight_bytes"] = weight_bytes
            out["peak_over_weights"] = round(max(out.get("peak_cuda_bytes", 0), peak) / weight_bytes, 3)
        return out


def summary(record: dict[str, Any]) -> str:
    """One line for the end of a run: peak per stage and in total (x the weight bytes)."""
    key = "peak_cuda_bytes" if "peak_cuda_bytes" in record else "peak_rss_bytes"
    parts = [f"{name} {v.get(key, 0) / GiB:.2f}" for name, v in record["stages"].items()]
    ratio = f" ({record['peak_over_weights']:.2f} x the weights)" if "peak_over_weights" in record else ""
    kind = "GPU memory" if key == "peak_cuda_bytes" else "RSS"
    return f"Peak {kind} (GiB): {', '.join(parts)}; total {record[key] / GiB:.2f}{ratio}"


# ------------------------------------------------------------------------------------------------ pre-flight


@dataclass
class Shape:
    """What the estimate needs from the config: bytes per element, parameters, one layer, the vocabulary."""

    element_bytes: int
    parameters: int
    layer_parameters: int
    down_parameters: int
    num_layers: int
    hidden: int
    vocab: int
    load_extra: int = 0  # bytes held while loading besides the weights: the checkpoint's, when converted

    @property
    def weight_bytes(self) -> int:
        return self.parameters * self.element_bytes

    @property
    def layer_bytes(self) -> int:
        return self.layer_parameters * self.element_bytes


def shape_of(config, element_bytes: int) -> Shape:
    """Parameter counts from the config alone (the model built on the meta device: no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from hf_layerprune.architectures import get_architecture
    from hf_layerprune.architectures.base import get_submodule

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    arch = get_architecture(config)
    layers = arch.get_layers(model)
    layer = max(sum(p.numel() for p in each.parameters()) for each in layers)
    try:
        down = get_submodule(layers[0], arch.down_proj).weight.numel() if arch.down_proj else layer // 9
    except AttributeError:
        down = layer // 9
    return Shape(element_bytes, sum(p.numel() for p in model.parameters()), layer, down, len(layers),
                 config.hidden_size, config.vocab_size)


def _dtype_bytes(dtype) -> int:
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    return torch.empty((), dtype=dtype or torch.float32).element_size()


def element_bytes(recipe, config, gguf: bool) -> tuple[int, int | None]:
    """(bytes per element of the loaded model, of the checkpoint's tensors (None for GGUF))."""
    from hf_layerprune.surgery.loading import torch_dtype

    stored = None if gguf else _dtype_bytes(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))
    want = torch_dtype(recipe.dtype)
    if want == "auto":
        return (4 if gguf else stored), stored
    return _dtype_bytes(want), stored


FIDELITY_TOKENS = 1024  # evaluation/fidelity.py DEFAULT_SEQ_LEN (memory.py imports nothing heavy)


def _logits(shape: Shape, batch: int, tokens: int) -> int:
    """fp32 logits, their log-softmax and gradient for `batch` x `tokens`."""
    return batch * tokens * shape.vocab * 4 * 3


def _evaluate_bytes(shape: Shape, recipe) -> int:
    """lm-eval imported and its batches of short multiple-choice contexts; perplexity windows one at a time; the
    generation-fidelity window (both models' log-probabilities of one 1,024-token document, evaluation/fidelity.py)."""
    tokens = min(512, recipe.perplexity_tokens or 512)
    fidelity = _logits(shape, 1, FIDELITY_TOKENS)
    return EVAL_BYTES + max(_logits(shape, recipe.batch_size, 32), _logits(shape, 1, tokens), fidelity) if recipe.evaluate else 0


def estimate(shape: Shape, recipe, *, device: str = "cpu") -> dict[str, Any]:
    """Peak bytes of the in-memory route for `recipe`, by stage: {"estimate_bytes", "stages", "parts"}.

    One copy of the weights W; copy-on-write of what the healers change (absorb: `layers` kept layers per removed
    run, about drop/4 runs; linear/bias/projection: one down_proj per run; LoRA merges and distill: the LoRA
    targets, taken as all MLP weights; distill:adapter=full: every layer); trainer state (gradient and two AdamW
    moments per trained weight); calibration, evaluation logits (fp32) and one safetensors shard while saving."""
    if getattr(recipe, "load_in_4bit", False):
        return estimate_4bit(shape, recipe, device=device)
    from hf_layerprune.healing import heal_names
    e, W, Wl = shape.element_bytes, shape.weight_bytes, shape.layer_bytes
    runtime = 0 if device.startswith("cuda") else RUNTIME_BYTES
    drop = recipe.drop or len(recipe.layers or []) or 1
    runs = max(1, round(drop / 4))
    seq = recipe.seq_len
    logits = lambda batch, tokens: _logits(shape, batch, tokens)  # noqa: E731
    stream = lambda samples: samples * seq * shape.hidden * e  # noqa: E731
    kept = shape.num_layers - drop
    cow = train = data = 0
    heals = heal_names(recipe.heal)
    for name in heals:
        if name == "absorb":
            width = 2
            cow += min(kept, width * runs) * Wl
            train = max(train, 3 * width * Wl)
            data = max(data, 3 * stream(recipe.calibration_samples + 8) + logits(1, seq))  # lm_loss: one row
        elif name in ("linear", "bias", "projection"):
            cow += runs * shape.down_parameters * e
            data = max(data, 2 * (shape.hidden + 1) ** 2 * 8 + logits(1, seq))
        elif name in ("lora", "qlora", "distill"):
            full = name == "distill" and "adapter=full" in (recipe.heal or "")
            cow += kept * (Wl if full else 3 * shape.down_parameters * e)
            train = max(train, 3 * kept * Wl if full else 0)
            data = max(data, logits(4, seq) * (2 if name == "distill" else 1))
        elif name == "replace":
            train = max(train, 4 * Wl)
            data = max(data, 3 * stream(recipe.calibration_samples + 8))
    score = 0
    if recipe.drop and not recipe.layers and not recipe.offload:
        score = runs * shape.down_parameters * e + 2 * (shape.hidden + 1) ** 2 * 8 + logits(1, seq)
    evaluate = _evaluate_bytes(shape, recipe)
    save = 64 * 2**20  # safetensors writes from the tensors' memory: no shard-sized buffer
    stages = {"load": shape.load_extra, "score": score, "heal": cow + train + data, "evaluate": cow + evaluate, "save": cow + save}
    stages = {k: runtime + W + v for k, v in stages.items()}
    return {"estimate_bytes": max(stages.values()), "weight_bytes": W, "stages": stages, "device": device,
            "parts": {"weights": W, "runtime": runtime, "copy_on_write": cow, "training": train, "save_buffer": save}}


def estimate_4bit(shape: Shape, recipe, *, device: str = "cpu") -> dict[str, Any]:
    """Peak bytes of `--load-in-4bit` by stage: the decoder layers' linear weights in NF4, embeddings, head and
    norms in the compute dtype; QLoRA's adapter with its fp32 gradient and AdamW moments (rank 8 on the
    MLP: tiny); the LM loss's logits; evaluation as in `estimate`. Nothing is copied: the adapter stays unmerged and
    the output is written from the source's shards one tensor at a time. Loading reads the 16-bit checkpoint one
    tensor at a time, but on the CPU its mmapped pages are counted in the resident set while it loads
    (`load_extra`, set by the caller)."""
    linear = shape.layer_parameters * shape.num_layers
    e = shape.element_bytes  # the compute dtype: embeddings, head and norms stay in it
    W = int(linear * NF4_BYTES + (shape.parameters - linear) * e)
    runtime = 0 if device.startswith("cuda") else RUNTIME_BYTES
    drop = recipe.drop or len(recipe.layers or []) or 1
    kept = shape.num_layers - drop
    seq = recipe.seq_len
    inter = shape.down_parameters // shape.hidden
    adapter = kept * 3 * 8 * (shape.hidden + inter) * 16  # rank 8, fp32 + grad + AdamW
    layer_activations = 4 * seq * (8 * shape.hidden + 4 * inter) * e  # batch 4: what one layer saves for backward
    checkpointing = device.startswith("cuda")  # the trainer's default: on for CUDA, off on the CPU
    activations = (kept * 4 * seq * shape.hidden * e + layer_activations) if checkpointing else kept * layer_activations
    heal = adapter + activations + _logits(shape, 4, seq) if recipe.heal not in (None, "none") else 0
    score = 2 * recipe.calibration_samples * seq * shape.hidden * 4 + _logits(shape, 1, seq)
    evaluate = _evaluate_bytes(shape, recipe)
    save = 2 * shape.down_parameters * 4  # one weight and its merged delta in fp32
    stages = {"load": shape.load_extra, "score": score, "heal": heal, "evaluate": adapter + evaluate, "save": save}
    stages = {k: runtime + W + v for k, v in stages.items()}
    return {"estimate_bytes": max(stages.values()), "weight_bytes": W, "stages": stages, "device": device,
            "parts": {"weights": W, "runtime": runtime, "copy_on_write": 0, "training": adapter, "save_buffer": save}}


def budget_bytes(device: str = "cpu") -> tuple[int, str]:
    """(bytes the run may use, where that figure comes from): $HF_LAYERPRUNE_MEMORY_BUDGET, else the device's."""
    from hf_layerprune.surgery.layers import parse_size

    given = os.environ.get(BUDGET_ENV)
    if given:
        return parse_size(given), f"${BUDGET_ENV}"
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return int(torch.cuda.get_device_properties(index).total_memory), f"{torch.cuda.get_device_name(index)} memory"
    available = _meminfo("MemAvailable") or 0
    return available + rss_bytes(), "available RAM"


def _meminfo(name: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(shape: Shape, recipe, *, device: str = "cpu") -> dict[str, Any]:
    """The estimate, recorded; one `LayerPruneError` line when it exceeds the budget, naming what would fit."""
    import dataclasses

    from hf_layerprune.runtime.errors import ConfigError

    record = estimate(shape, recipe, device=device)
    budget, where = budget_bytes(device)
    record.update(budget_bytes=budget, budget_from=where)
    if record["estimate_bytes"] <= budget:
        return record
    options = []
    if shape.element_bytes > 2:
        smaller = dataclasses.replace(shape, element_bytes=2)
        if estimate(smaller, recipe, device=device)["estimate_bytes"] <= budget:
            options.append("--dtype bfloat16")
    if "adapter=full" in (recipe.heal or ""):  # a full teacher beside a fully trainable student
        adapter = dataclasses.replace(recipe, heal=recipe.heal.replace("adapter=full", "adapter=lora"))
        if estimate(shape, adapter, device=device)["estimate_bytes"] <= budget:
            options.append("--heal distill:adapter=lora (adapter=full copies every layer for the teacher and trains it)")
    lean = dataclasses.replace(recipe, heal="none", evaluate=False)
    if estimate(shape, lean, device=device)["estimate_bytes"] <= budget:
        options.append("--heal none --no-eval")
    if not getattr(recipe, "load_in_4bit", False) and recipe.granularity == "block":
        four = dataclasses.replace(recipe, load_in_4bit=True, metric=None, heal=None).resolve_defaults()
        if estimate(shape, four, device=device)["estimate_bytes"] <= budget:
            options.append("--load-in-4bit (NF4: angular + QLoRA, the 16-bit output written from the shards)")
    streamed = RUNTIME_BYTES + 3 * shape.layer_bytes + min(2 * GiB, shape.weight_bytes)
    if streamed <= budget:
        options.append("--offload --metric bi --calibration FILE --heal none --no-eval (one layer in memory at a time)")
    hint = f"; options that would fit: {'; '.join(options)}" if options else "; no option fits: use a machine with more memory"
    raise ConfigError(  # a combination of options (recipe x model x device) that cannot run
        f"this recipe needs about {record['estimate_bytes'] / GiB:.1f} GiB on {device} "
        f"(weights {shape.weight_bytes / GiB:.1f} GiB) but {budget / GiB:.1f} GiB is available ({where}){hint}"
    )
