"""Speed and size: parameter count, prefill and decode throughput, peak memory, KV-cache bytes per token, disk size.

Prefill: one forward pass over ``batch_size x prompt_len`` random token ids (``use_cache=True``), timed.
Decode: ``decode_tokens`` greedy single-token steps on that KV cache, timed as a whole. Each is measured
``repeats`` times after ``warmup`` untimed runs; the median is reported. CUDA is synchronised around timers.

Peak memory is what the device can tell us, and the result says which (``peak_memory_kind``):
- CUDA: ``torch.cuda.max_memory_allocated`` during the timed runs (weights included), ``cuda_max_allocated``;
- CPU: the growth of the process's resident set size over the runs, sampled every 2 ms by a thread
  (``cpu_rss_delta``): activations and KV cache, not the weights (already resident). Approximate.

Long module: the single-model measurement, the interleaved pair protocol and the plausibility bound share
one runner (`_Runner`) and one set of record fields; split, the card would read fields defined in three places.
"""

from __future__ import annotations

import inspect
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from hf_layerprune.surgery.quantized import count_parameters
from hf_layerprune.surgery.base_view import as_base
from hf_layerprune.report.results import plausibility, plausible_speedup  # noqa: F401 - re-exported

NON_ATTENTION_LAYER_TYPES = {"linear_attention", "conv", "mamba", "mlp", "moe_only"}


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


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3); with fewer than 2 values all three are the value."""
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def layer_parameters(model) -> int:
    """Parameters of the decoder layers: everything but the input embedding and an untied output head (the part
    whose compute and bytes depth pruning removes)."""
    skip = set()
    for mod in (model.get_input_embeddings(), getattr(model, "get_output_embeddings", lambda: None)()):
        if mod is not None:
            skip |= {p.data_ptr() for p in mod.parameters()}
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in skip or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
    return total


def measure_speed_pair(
    base,
    pruned,
    tokenizer=None,
    *,
    prompt_len: int = 128,
    decode_tokens: int = 32,
    batch_size: int = 1,
    warmup: int = 2,
    repeats: int = 7,
    threads: int | None = None,
    base_dir: str | os.PathLike | None = None,
    pruned_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Base and pruned timed by the same protocol, interleaved (docs/evaluation.md, "Speed protocol").

    ``warmup`` untimed runs of each model, then ``repeats`` rounds that time one prefill + decode of each model, the
    order alternating (base first in even rounds, pruned first in odd ones) so that drift, turbo and cache state hit
    both alike. CPU threads are pinned to ``threads`` (default: torch's current count) for the whole measurement and
    recorded. Per model: medians and quartiles; per round: the speed-up pruned/base, whose median and half
    interquartile range (the spread) are what the card shows, checked against ``plausible_speedup``.

    ``base`` may be a ``base_view.SharedBase`` over the pruned model: each of its runs then happens inside
    ``as_base`` (entered outside the timed region), so no second copy of the weights is needed.

    Returns the report's ``evaluation.speed``: {"base", "pruned", "protocol", "speedup", "plausibility"}.
    """
    import torch

    models = {"base": base, "pruned": pruned}

    def inside(who: str):  # the model as it runs (a SharedBase switched to its unpruned layers)
        return as_base(models[who])

    before_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        runners = {}
        for who in models:
            with inside(who) as m:
                runners[who] = _Runner(m, tokenizer, prompt_len, decode_tokens, batch_size, seed)
        def run(who: str) -> tuple[float, float]:
            with inside(who):
                return runners[who].run()

        try:
            times = interleaved_times(run, warmup, repeats)
        finally:
            for runner in runners.values():
                runner.restore()
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before_threads)
    out: dict[str, Any] = {}
    for who, folder in (("base", base_dir), ("pruned", pruned_dir)):
        with inside(who) as model:
            rec = runners[who].describe()
            rec["layer_parameters"] = layer_parameters(model)
        rec["torch_threads"] = used_threads if rec["device"] == "cpu" else None  # as pinned while timing
        rec.update(phase_figures(times[who], batch_size * prompt_len, batch_size * decode_tokens))
        rec["decode_ms_per_token"] = 1000 * rec["decode_seconds"] / decode_tokens if decode_tokens else None
        if folder is not None and Path(folder).is_dir():
            rec.update(directory_size(folder))
        out[who] = rec
    out["speedup"] = speedups(times, decode_tokens)
    out["protocol"] = {
        "warmup": max(0, warmup), "repeats": max(1, repeats), "order": "interleaved, alternating",
        "threads": used_threads if out["base"]["device"] == "cpu" else None,
        "batch_size": batch_size, "prompt_len": prompt_len, "decode_tokens": decode_tokens,
    }
    out["plausibility"] = plausibility(out)
    return out


def interleaved_times(run, warmup: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """The pair protocol's clock: ``warmup`` untimed ``run(who)`` of "base" then "pruned", then ``repeats`` rounds
    timing both, base first in even rounds and pruned first in odd ones. ``run(who)`` -> (prefill s, decode s).
    Returns {who: {"prefill": [s per round], "decode": [...]}}."""
    times: dict[str, dict[str, list[float]]] = {w: {"prefill": [], "decode": []} for w in ("base", "pruned")}
    for who in ("base", "pruned"):
        for _ in range(max(0, warmup)):
            run(who)
    for r in range(max(1, repeats)):
        for who in (("base", "pruned") if r % 2 == 0 else ("pruned", "base")):
            pre, dec = run(who)
            times[who]["prefill"].append(pre)
            times[who]["decode"].append(dec)
    return times


def phase_figures(times: dict[str, list[float]], prefill_tokens: int, decode_tokens: int) -> dict[str, Any]:
    """One model's record from its rounds: per phase the median seconds, every round's seconds, the median
    tokens/s and its interquartile range."""
    rec: dict[str, Any] = {}
    for phase, tokens in (("prefill", prefill_tokens), ("decode", decode_tokens)):
        q1, med, q3 = _quartiles(times[phase])
        rec[f"{phase}_seconds"] = med
        rec[f"{phase}_seconds_all"] = times[phase]
        rec[f"{phase}_tokens_per_s"] = tokens / med if tokens and med else None
        rec[f"{phase}_tokens_per_s_iqr"] = [tokens / q3, tokens / q1] if tokens and q1 and q3 else None
    return rec


def speedups(times: dict[str, dict[str, list[float]]], decode_tokens: int) -> dict[str, Any]:
    """Per phase the per-round speed-up base/pruned: its median, quartiles, spread (half the IQR) and every ratio."""
    out = {}
    for phase in ("prefill", "decode"):
        ratios = [b / p for b, p in zip(times["base"][phase], times["pruned"][phase]) if p > 0]
        if ratios and (phase == "prefill" or decode_tokens):
            q1, med, q3 = _quartiles(ratios)
            out[phase] = {"median": med, "q1": q1, "q3": q3, "spread": (q3 - q1) / 2, "per_round": ratios}
    return out


class _Runner:
    """One model's prefill + decode, timed (the same steps as ``measure_speed``)."""

    def __init__(self, model, tokenizer, prompt_len: int, decode_tokens: int, batch_size: int, seed: int) -> None:
        import torch

        self.model, self.decode_tokens, self.batch_size, self.prompt_len = model, decode_tokens, batch_size, prompt_len
        self.dev = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        vocab = model.get_input_embeddings().weight.shape[0]
        low = 0
        if tokenizer is not None and getattr(tokenizer, "all_special_ids", None):
            low = min(max(tokenizer.all_special_ids) + 1, vocab - 1)
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(low, vocab, (batch_size, prompt_len), generator=g).to(self.dev)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.was_training = model.training
        self.peak_extra = 0
        model.eval()

    def _sync(self) -> None:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    @staticmethod
    def _cache(out):
        return out["cache"] if "cache" in out.keys() else out["past_key_values"]

    def run(self) -> tuple[float, float]:
        import torch

        cuda = self.dev.type == "cuda"
        with torch.inference_mode():
            self._sync()
            if cuda:
                start_mem = torch.cuda.memory_allocated(self.dev)
                torch.cuda.reset_peak_memory_stats(self.dev)
            t0 = time.perf_counter()
            out = self.model(input_ids=self.ids, use_cache=True)
            self._sync()
            t1 = time.perf_counter()
            past, nxt = self._cache(out), out.logits[:, -1:].argmax(-1)
            for _ in range(self.decode_tokens):
                step = self.model(input_ids=nxt, use_cache=True, **{self.cache_arg: past})
                past, nxt = self._cache(step), step.logits[:, -1:].argmax(-1)
            self._sync()
            t2 = time.perf_counter()
            if cuda:
                self.peak_extra = max(self.peak_extra, torch.cuda.max_memory_allocated(self.dev) - start_mem)
        return t1 - t0, t2 - t1

    def restore(self) -> None:
        self.model.train(self.was_training)

    def describe(self) -> dict[str, Any]:
        import torch

        cuda = self.dev.type == "cuda"
        rec: dict[str, Any] = {
            "device": str(self.dev),
            "dtype": str(self.dtype).replace("torch.", ""),
            "torch_threads": None if cuda else torch.get_num_threads(),
            "batch_size": self.batch_size,
            "prompt_len": self.prompt_len,
            "decode_tokens": self.decode_tokens,
            "parameters": count_parameters(self.model),
            "weights_bytes": weights_bytes(self.model),
            "num_layers": getattr(self.model.config, "num_hidden_layers", None),
            # CUDA: activations + KV cache above what was allocated before the run (weights excluded); on CPU the
            # resident-set growth of a few KiB measures nothing and is not recorded
            "peak_memory_bytes": int(self.peak_extra) if cuda else None,
            "peak_memory_kind": "cuda_run_peak_above_weights" if cuda else None,
        }
        try:
            rec["kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(self.model.config, torch.empty((), dtype=self.dtype).element_size())
        except (ValueError, TypeError, AttributeError):
            rec["kv_cache_bytes_per_token"] = None
        return rec


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
    runner = _Runner(model, tokenizer, prompt_len, decode_tokens, batch_size, seed)
    dev = runner.dev
    cuda = dev.type == "cuda"
    prefill_times, decode_times = [], []
    sampler = None
    try:
        for _ in range(max(0, warmup)):
            runner.run()
        if not cuda:
            try:
                sampler = _RssSampler()
            except ImportError:  # psutil comes with accelerate; without it, report no CPU peak
                sampler = None
            else:
                sampler.__enter__()
        try:
            for _ in range(max(1, repeats)):
                pre, dec = runner.run()
                prefill_times.append(pre)
                decode_times.append(dec)
        finally:
            if sampler is not None:
                sampler.__exit__(None, None, None)
    finally:
        runner.restore()
    prefill_s = statistics.median(prefill_times)
    decode_s = statistics.median(decode_times)
    result = runner.describe()
    result.update(
        repeats=max(1, repeats),
        prefill_seconds=prefill_s,
        prefill_tokens_per_s=batch_size * prompt_len / prefill_s,
        decode_seconds=decode_s,
        decode_tokens_per_s=(batch_size * decode_tokens / decode_s) if decode_tokens else None,
        decode_ms_per_token=(1000 * decode_s / decode_tokens) if decode_tokens else None,
    )
    if cuda:
        result.update(peak_memory_bytes=int(torch.cuda.max_memory_allocated(dev)), peak_memory_kind="cuda_max_allocated")
    elif sampler is not None:
        result.update(peak_memory_bytes=int(sampler.delta), peak_memory_kind="cpu_rss_delta")
    else:
        result.update(peak_memory_bytes=None, peak_memory_kind=None)
    if model_dir is not None and Path(model_dir).is_dir():
        result.update(directory_size(model_dir))
    return result
