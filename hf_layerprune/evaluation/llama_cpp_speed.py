"""Prompt and generation throughput of a base and a pruned GGUF file in llama.cpp (through llama-cpp-python).

People run the GGUF output in llama.cpp, Ollama or LM Studio, whose kernels are not transformers': the card shows
these figures beside the transformers ones, marked with the runtime. Measured only when `llama_cpp` is importable
(an optional install that compiles llama.cpp: docs/gguf.md).

The protocol is the transformers one, with its code (speed.interleaved_times, phase_figures, speedups; docs/evaluation.md
"Speed and size"): both files loaded once
(memory-mapped), ``warmup`` untimed runs of each, then ``repeats`` rounds that time one prompt evaluation of
``prompt_len`` fixed random tokens and ``decode_tokens`` single-token steps after it, the order alternating between
rounds; medians per file, and the median per-round speed-up with half its interquartile range. The steps feed fixed
random tokens rather than greedy ones: llama-cpp-python keeps no logits without ``logits_all`` (which would cost a
full-vocabulary copy per step), and a step costs the same whichever token it reads.
"""

from __future__ import annotations

import importlib.util
import os
import random
import time
from pathlib import Path
from typing import Any

from hf_layerprune.evaluation.speed import interleaved_times, phase_figures, speedups
from hf_layerprune.report.results import plausibility


def installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def measure_gguf_pair(base_file: str | Path, pruned_file: str | Path, *, prompt_len: int = 128, decode_tokens: int = 32,
                      warmup: int = 1, repeats: int = 5, threads: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The report's ``evaluation.speed.llama_cpp``: {"runtime", "protocol", "base", "pruned", "speedup",
    "plausibility"} (the bound of report.results.plausible_speedup, from each file's layers, parameters and bytes)."""
    import llama_cpp

    threads = threads or os.cpu_count() or 1
    files = {"base": Path(base_file), "pruned": Path(pruned_file)}
    models = {who: llama_cpp.Llama(model_path=str(path), n_ctx=prompt_len + decode_tokens, n_batch=prompt_len,
                                   n_threads=threads, n_threads_batch=threads, seed=seed, verbose=False)
              for who, path in files.items()}
    vocab = min(m.n_vocab() for m in models.values())
    rng = random.Random(seed)
    prompt = [rng.randrange(vocab) for _ in range(prompt_len)]
    steps = [rng.randrange(vocab) for _ in range(decode_tokens)]
    times = interleaved_times(lambda who: _run(models[who], prompt, steps), warmup, repeats)
    out: dict[str, Any] = {"runtime": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"}
    for who, path in files.items():
        meta = models[who].metadata
        layers = meta.get(f"{meta.get('general.architecture')}.block_count")
        rec: dict[str, Any] = {"file": path.name, "file_bytes": path.stat().st_size,
                               "file_type": meta.get("general.file_type"),
                               "num_layers": int(layers) if layers and str(layers).isdigit() else None,
                               "parameters": models[who]._model.n_params(),
                               "weights_bytes": models[who]._model.size()}
        out[who] = {**rec, **phase_figures(times[who], prompt_len, decode_tokens)}
    out["speedup"] = speedups(times, decode_tokens)
    out["plausibility"] = plausibility(out)  # the transformers rows' bound: what the removed layers can explain
    out["protocol"] = {"warmup": max(0, warmup), "repeats": max(1, repeats), "order": "interleaved, alternating",
                       "threads": threads, "prompt_len": prompt_len, "decode_tokens": decode_tokens}
    for model in models.values():
        model.close()
    return out


def _run(llm, prompt: list[int], steps: list[int]) -> tuple[float, float]:
    """Seconds of one prompt evaluation and of one step per token of `steps` after it (a fresh context each time)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for token in steps:
        llm.eval([token])
    return prefill, time.perf_counter() - start
