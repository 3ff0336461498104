"""Speed and size: parameter count, prefill and decode throughput, peak memory, KV-cache bytes per token, disk size.

Prefill: one forward pass over ``batch_size x prompt_len`` random token ids (``use_cache=True``), timed.
Decode: ``decode_tokens`` greedy single-token steps on that KV cache, timed as a whole. Each is measured
``repeats`` times after ``warmup`` untimed runs; the median is reported. CUDA is synchronised around timers.

Peak memory is what the device can tell us, and the result says which (``peak_memory_kind``):
- CUDA: ``torch.cuda.max_memory_allocated`` during the timed runs (weights included), ``cuda_max_allocated``;
- CPU: the growth of the process's resident set size over the runs, sampled every 2 ms by a thread
  (``cpu_rss_delta``): activations and KV cache, not the weights (already resident). Approximate.
"""

from __future__ import annotations

import inspect
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

NON_ATTENTION_LAYER_TYPES = {"linear_attention", "conv", "mamba", "mlp", "moe_only"}


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_bytes(model) -> int:
    """Bytes of parameters and buffers in memory (tied weights counted once)."""
    seen = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _get(config, name, default=None):
    value = getattr(config, name, None)
    return default if value is None else value


def kv_cache_bytes_per_token(config, dtype_bytes: int | None = None) -> int:
    """2 (K and V) x kv_heads x head_dim x bytes x attention layers, from the config alone.

    Layers without attention (DeciLM ``block_configs[i].attention.no_op``, linear-attention/conv ``layer_types``)
    are not counted; DeciLM ``n_heads_in_group`` gives a per-layer KV head count. Sliding-window layers are counted
    like full ones (their cache stops growing at the window, so this is the cost per token of short contexts).
    """
    text = getattr(config, "text_config", None) or config
    heads = _get(text, "num_attention_heads")
    hidden = _get(text, "hidden_size")
    head_dim = _get(text, "head_dim") or (hidden // heads if hidden and heads else None)
    if head_dim is None or heads is None:
        raise ValueError("config has no num_attention_heads/head_dim")
    kv_heads = _get(text, "num_key_value_heads", heads)
    if dtype_bytes is None:
        dtype_bytes = _dtype_bytes(_get(text, "dtype") or _get(text, "torch_dtype") or "float32")
    blocks = getattr(text, "block_configs", None)
    if blocks:
        total = 0
        for block in blocks:
            attn = block.get("attention", {}) if isinstance(block, dict) else getattr(block, "attention", {})
            attn = attn if isinstance(attn, dict) else vars(attn)
            if attn.get("no_op") or attn.get("replace_with_linear"):
                continue
            group = attn.get("n_heads_in_group")
            layer_kv = heads // group if group else kv_heads
            total += 2 * layer_kv * head_dim * dtype_bytes
        return int(total)
    num_layers = _get(text, "num_hidden_layers")
    layer_types = getattr(text, "layer_types", None)
    if layer_types:
        num_layers = sum(1 for t in layer_types[:num_layers] if t not in NON_ATTENTION_LAYER_TYPES)
    return int(2 * kv_heads * head_dim * dtype_bytes * num_layers)


def _dtype_bytes(dtype) -> int:
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), torch.float32)
    return torch.empty((), dtype=dtype).element_size()


def directory_size(path: str | os.PathLike) -> dict[str, int]:
    """{"disk_bytes": all files, "weights_disk_bytes": *.safetensors/*.bin/*.gguf} under ``path``."""
    total = weights = 0
    for p in Path(path).rglob("*"):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
            size = p.stat().st_size
            total += size
            if p.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
                weights += size
    return {"disk_bytes": total, "weights_disk_bytes": weights}


class _RssSampler:
    """Peak RSS growth of this process while active (CPU peak-memory proxy)."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start_rss = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start_rss)


def measure_speed(
    model,
    tokenizer=None,
    *,
    prompt_len: int = 128,
    decode_tokens: int = 32,
    batch_size: int = 1,
    device: str | None = None,
    warmup: int = 1,
    repeats: int = 3,
    model_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Throughput, memory and size of ``model`` (moved to ``device`` when given). See the module docstring.

    Token ids are random draws from the vocabulary (special tokens excluded when ``tokenizer`` is given), so the
    numbers do not depend on any text; decode is greedy for exactly ``decode_tokens`` steps (no early EOS).
    """
    import torch

    if prompt_len < 1 or decode_tokens < 0 or batch_size < 1:
        raise ValueError("prompt_len and batch_size must be >= 1 and decode_tokens >= 0")
    if device is not None:
        model.to(device)
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocab = model.get_input_embeddings().weight.shape[0]
    low = 0
    if tokenizer is not None and getattr(tokenizer, "all_special_ids", None):
        low = min(max(tokenizer.all_special_ids) + 1, vocab - 1)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (batch_size, prompt_len), generator=g).to(dev)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def prefill():
        return model(input_ids=ids, use_cache=True)

    # transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(out):
        return out["cache"] if "cache" in out.keys() else out["past_key_values"]

    def decode(out) -> None:
        past = cache_of(out)
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(decode_tokens):
            step = model(input_ids=nxt, use_cache=True, **{cache_arg: past})
            past = cache_of(step)
            nxt = step.logits[:, -1:].argmax(-1)

    was_training = model.training
    model.eval()
    prefill_times, decode_times = [], []
    try:
        with torch.inference_mode():
            for _ in range(max(0, warmup)):
                decode(prefill())
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
                sampler = None
            else:
                try:
                    sampler = _RssSampler()
                except ImportError:  # psutil comes with accelerate; without it, report no CPU peak
                    sampler = None
                else:
                    sampler.__enter__()
            try:
                for _ in range(max(1, repeats)):
                    t0 = time.perf_counter()
                    out = prefill()
                    sync()
                    t1 = time.perf_counter()
                    decode(out)
                    sync()
                    t2 = time.perf_counter()
                    prefill_times.append(t1 - t0)
                    decode_times.append(t2 - t1)
                    del out
            finally:
                if sampler is not None:
                    sampler.__exit__(None, None, None)
    finally:
        model.train(was_training)
    prefill_s = statistics.median(prefill_times)
    decode_s = statistics.median(decode_times)
    result: dict[str, Any] = {
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads() if not cuda else None,
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "decode_tokens": decode_tokens,
        "repeats": max(1, repeats),
        "parameters": count_parameters(model),
        "weights_bytes": weights_bytes(model),
        "num_layers": getattr(model.config, "num_hidden_layers", None),
        "prefill_seconds": prefill_s,
        "prefill_tokens_per_s": batch_size * prompt_len / prefill_s,
        "decode_seconds": decode_s,
        "decode_tokens_per_s": (batch_size * decode_tokens / decode_s) if decode_tokens else None,
        "decode_ms_per_token": (1000 * decode_s / decode_tokens) if decode_tokens else None,
    }
    if cuda:
        result.update(peak_memory_bytes=int(torch.cuda.max_memory_allocated(dev)), peak_memory_kind="cuda_max_allocated")
    elif sampler is not None:
        result.update(peak_memory_bytes=int(sampler.delta), peak_memory_kind="cpu_rss_delta")
    else:
        result.update(peak_memory_bytes=None, peak_memory_kind=None)
    try:
        result["kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(model.config, torch.empty((), dtype=dtype).element_size())
    except (ValueError, TypeError, AttributeError):
        result["kv_cache_bytes_per_token"] = None
    if model_dir is not None and Path(model_dir).is_dir():
        result.update(directory_size(model_dir))
    return result
