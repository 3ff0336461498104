"""A model and its base evaluated with identical settings, one after the other (`hf-layerprune evaluate`): the
base is evaluated first and kept only while the pair's generation fidelity and speed still need it."""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Any, Callable

from hf_layerprune.runtime.errors import CheckpointError
from hf_layerprune.evaluation import EvalSettings, evaluate_model, evaluation_section, fidelity_of_pair, speed_of_pair
from hf_layerprune.hub import resolved_revision
from hf_layerprune.surgery.loading import load_model, resolve_source

Log = Callable[[str], None]


def load_for_evaluation(name: str, revision: str | None, *, dtype: str, device: str | None, allow_pickle: bool,
                        trust_remote_code: bool = False, log: Log = print):
    """(model, tokenizer or None, the commit or revision, the local folder or None) of a model to evaluate."""
    source = resolve_source(name, revision, allow_pickle=allow_pickle)
    sha = resolved_revision(source) if source.kind == "hub" else None
    log(f"Loading {name}" + (f" @ {sha or revision}" if (sha or revision) else ""))
    model, tokenizer = load_model(source, dtype=dtype, device=device, allow_pickle=allow_pickle, need_tokenizer=False,
                                  trust_remote_code=trust_remote_code)
    return model, tokenizer, sha or revision, str(source.path) if source.kind == "dir" else None


def compare_models(model: str, base: str | None, settings: EvalSettings, *, revision: str | None = None,
                   base_revision: str | None = None, dtype: str = "auto", allow_pickle: bool = False,
                   trust_remote_code: bool = False, log: Log = print) -> dict[str, Any]:
    """The evaluation section of `model` (and of `base`, when given, with identical settings): lm-eval tasks,
    perplexity, the pair's generation fidelity and speed (timed together)."""
    start = time.perf_counter()
    device = settings.device
    base_result = base_model = base_dir = None
    each = dataclasses.replace(settings, speed=False) if base and settings.speed else settings
    opts = dict(dtype=dtype, device=device, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, log=log)
    if base:
        base_model, base_tok, base_sha, base_dir = load_for_evaluation(base, base_revision, **opts)
        if base_tok is None:
            raise CheckpointError(f"no tokenizer found for {base}")
        base_result = evaluate_model(base_model, base_tok, each, model_id=base, revision=base_sha, model_dir=base_dir,
                                     log=log)
        if not settings.speed and not settings.generation:
            base_model = None
            _free()
    pruned_model, tokenizer, sha, local = load_for_evaluation(model, revision, **opts)
    if tokenizer is None:
        if base is None:
            raise CheckpointError(f"no tokenizer found for {model}")
        from transformers import AutoTokenizer  # the base's, for an output saved without one

        tokenizer = AutoTokenizer.from_pretrained(base, revision=base_revision)
    pruned_result = evaluate_model(pruned_model, tokenizer, each, model_id=model if sha else None, revision=sha,
                                   model_dir=local, log=log)
    pair = generated = None
    if base_model is not None and settings.generation:
        generated = fidelity_of_pair(base_model, pruned_model, tokenizer, settings, log=log)
    if base_model is not None and settings.speed:
        pair = speed_of_pair(base_model, pruned_model, tokenizer, settings, base_dir=base_dir, pruned_dir=local, log=log)
    del base_model, pruned_model
    _free()
    return evaluation_section(settings, base_result, pruned_result, time.perf_counter() - start, speed_pair=pair,
                              generation=generated)


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
