"""Evaluation stage: lm-eval tasks, perplexity, speed and size, for the base and the pruned model alike.

- ``run_lm_eval`` (lm_eval_runner.py): lm-eval on an in-memory model, results cached on disk.
- ``perplexity`` (perplexity.py): the standard WikiText-2 recipe, context length stated.
- ``measure_speed`` (speed.py): parameters, prefill/decode tokens/s, peak memory, KV-cache bytes/token, disk size.
- ``evaluate_model`` runs all three with one ``EvalSettings``; ``evaluate_pair`` runs it on base and pruned with the
  same settings and adds the comparison: deltas and retention, and (paired.py) per-task Δ ± paired SE on the
  per-document scores, chance/majority baselines and the headline retention over the tasks the base model is
  clearly above its baseline on. Speed of the pair is measured interleaved (``measure_speed_pair``) and checked
  against what the removed layers can explain. The result is the report's ``evaluation`` section (docs/report.md,
  docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

from hf_layerprune.surgery import quantized
from hf_layerprune.surgery.base_view import as_base
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.evaluation.lm_eval_runner import (
    DEFAULT_TASKS,
    LOCAL_TASKS,
    OPTIONAL_TASKS,
    PRESETS,
    resolve_tasks,
    run_lm_eval,
)
from hf_layerprune.evaluation.fidelity import (
    DEFAULT_DOCS,
    DEFAULT_SEQ_LEN,
    fidelity_of_pair,
    generation_fidelity,
    held_out_text,
    reachable_text,
)
from hf_layerprune.evaluation.paired import paired_comparison
from hf_layerprune.evaluation.perplexity import perplexity
from hf_layerprune.evaluation.speed import kv_cache_bytes_per_token, measure_speed, measure_speed_pair
from hf_layerprune.report.results import ACCURACY_METRICS, compare, headline, main_metric, plausibility  # noqa: F401 - re-exported

Log = Callable[[str], None]

__all__ = [
    "DEFAULT_TASKS",
    "LOCAL_TASKS",
    "OPTIONAL_TASKS",
    "PRESETS",
    "EvalSettings",
    "check_tasks",
    "compare",
    "evaluate_for_recipe",
    "evaluate_model",
    "evaluate_pair",
    "evaluation_section",
    "fidelity_of_pair",
    "generation_fidelity",
    "reachable_text",
    "headline",
    "main_metric",
    "kv_cache_bytes_per_token",
    "measure_speed",
    "measure_speed_pair",
    "paired_comparison",
    "perplexity",
    "plausibility",
    "resolve_tasks",
    "run_lm_eval",
]


@dataclass
class EvalSettings:
    """Everything that decides an evaluation's numbers; stored as ``evaluation.settings``.

    ``tasks=[]`` skips lm-eval, ``perplexity=None`` skips perplexity, ``speed=False`` skips speed.
    """

    tasks: list[str] | None = None  # None: DEFAULT_TASKS; presets allowed ("local", "default+mmlu")
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int = 8
    include_path: str | None = None
    bootstrap_iters: int = 1000
    perplexity: str | None = "wikitext"
    seq_len: int = 512
    stride: int | None = None
    ppl_max_tokens: int | None = None
    speed: bool = True
    prompt_len: int = 128
    decode_tokens: int = 32
    speed_batch_size: int = 1
    speed_warmup: int = 2
    speed_repeats: int = 7
    speed_threads: int | None = None  # CPU threads for the speed measurement (None: torch's current count)
    generation: str | None = None  # held-out text for generation fidelity (fidelity.py); None skips it
    generation_docs: int = DEFAULT_DOCS
    generation_seq_len: int = DEFAULT_SEQ_LEN
    device: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True

    @classmethod
    def coerce(cls, settings: "EvalSettings | dict[str, Any] | None") -> "EvalSettings":
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation setting(s): {', '.join(unknown)}")
        return cls(**settings)

    def to_record(self) -> dict[str, Any]:
        """The settings as stored in the report (cache location left out: it does not change numbers)."""
        out = dataclasses.asdict(self)
        for key in ("cache_dir", "use_cache"):
            out.pop(key)
        out["tasks"] = resolve_tasks(self.tasks) if self.tasks != [] else []
        return out


def evaluate_model(
    model,
    tokenizer,
    settings: EvalSettings | dict[str, Any] | None = None,
    *,
    model_id: str | None = None,
    revision: str | None = None,
    model_dir: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """{"lm_eval": {task: {metric: {...}}}, "perplexity": {...} | None, "speed": {...} | None, "lm_eval_settings"}."""
    s = EvalSettings.coerce(settings)
    if s.device is not None:
        model.to(s.device)
    out: dict[str, Any] = {"lm_eval": {}, "perplexity": None, "speed": None}
    if s.tasks != []:
        run = run_lm_eval(
            model, tokenizer, s.tasks, num_fewshot=s.num_fewshot, limit=s.limit, batch_size=s.batch_size,
            include_path=s.include_path, cache_dir=s.cache_dir, use_cache=s.use_cache, model_id_for_cache=model_id,
            revision=revision, bootstrap_iters=s.bootstrap_iters, log=log,
        )
        out["lm_eval"] = run["results"]
        out["lm_eval_samples"] = run.get("samples") or {}
        out["lm_eval_settings"] = run["settings"]
    if s.perplexity:
        log(f"Perplexity on {s.perplexity} at {s.seq_len} tokens of context")
        out["perplexity"] = perplexity(
            model, tokenizer, s.perplexity, seq_len=s.seq_len, stride=s.stride, max_tokens=s.ppl_max_tokens,
        )
    if s.speed:
        log(f"Speed: prefill {s.prompt_len} tokens, decode {s.decode_tokens} tokens, batch {s.speed_batch_size}")
        out["speed"] = measure_speed(
            model, tokenizer, prompt_len=s.prompt_len, decode_tokens=s.decode_tokens,
            batch_size=s.speed_batch_size, model_dir=model_dir,
        )
    return out


def check_tasks(settings: EvalSettings | dict[str, Any] | None) -> list[str]:
    """Resolve the settings' tasks and check lm-eval knows them (call before loading models); returns the names."""
    from hf_layerprune.evaluation.lm_eval_runner import default_local_include_path, task_manager

    s = EvalSettings.coerce(settings)
    if s.tasks == []:
        return []
    names = resolve_tasks(s.tasks)
    include = s.include_path
    if include is None and any(n.startswith("local_") for n in names):
        include = default_local_include_path()
    task_manager(include, names)
    return names


def _main_metrics(results: dict[str, Any]) -> dict[str, str]:
    """{top-level task: its main metric} (sub-tasks of groups left out)."""
    out = {}
    for task, metrics in (results or {}).items():
        if isinstance(metrics, dict) and not any(isinstance(r, dict) and r.get("parent") for r in metrics.values()):
            name = main_metric(metrics)
            if name:
                out[task] = name
    return out


def evaluation_section(settings: EvalSettings, base: dict[str, Any] | None, pruned: dict[str, Any],
                       seconds: float | None = None, speed_pair: dict[str, Any] | None = None,
                       generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the report's ``evaluation`` section from evaluate_model outputs (base may be None) and, when both
    models were timed together, ``measure_speed_pair``'s result; ``generation``: ``generation_fidelity``'s."""
    record = settings.to_record()
    lm = pruned.get("lm_eval_settings") or (base or {}).get("lm_eval_settings") or {}
    for key in ("lm_eval_version", "device", "dtype"):
        if key in lm:
            record[key] = lm[key]
    if lm.get("include_path") and not record.get("include_path"):
        record["include_path"] = lm["include_path"]  # the rendered local tasks actually used
    record["harness"] = "lm-eval"
    section: dict[str, Any] = {
        "settings": record,
        "base": (base or {}).get("lm_eval", {}) if base is not None else None,
        "pruned": pruned.get("lm_eval", {}),
    }
    section["comparison"] = compare(section["base"], section["pruned"]) if base is not None else {}
    samples = {"base": (base or {}).get("lm_eval_samples") or {}, "pruned": pruned.get("lm_eval_samples") or {}}
    if base is not None and samples["base"] and samples["pruned"]:
        section["samples"] = samples  # per-document scores: the paired numbers can be re-checked from the report
        section["paired"] = paired_comparison(samples["base"], samples["pruned"], _main_metrics(section["pruned"]))
    ppl = {"base": (base or {}).get("perplexity"), "pruned": pruned.get("perplexity")}
    if ppl["base"] or ppl["pruned"]:
        if ppl["base"] and ppl["pruned"]:
            ppl["delta"] = ppl["pruned"]["perplexity"] - ppl["base"]["perplexity"]
            ppl["ratio"] = ppl["pruned"]["perplexity"] / ppl["base"]["perplexity"]
        section["perplexity"] = ppl
    speed = speed_pair or {"base": (base or {}).get("speed"), "pruned": pruned.get("speed")}
    if speed.get("base") or speed.get("pruned"):
        if speed_pair is None and speed.get("base") and speed.get("pruned"):
            speed["plausibility"] = plausibility(speed)
        section["speed"] = speed
    if generation is not None:
        section["generation"] = generation
    if seconds is not None:
        section["seconds"] = round(seconds, 3)
    return section


def evaluate_pair(
    base_model,
    pruned_model,
    tokenizer,
    settings: EvalSettings | dict[str, Any] | None = None,
    *,
    base_id: str | None = None,
    base_revision: str | None = None,
    pruned_dir: str | None = None,
    base_dir: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate base and pruned with identical settings; returns the report's ``evaluation`` section.

    ``base_model=None`` evaluates the pruned model alone (``base`` is null, no comparison).
    """
    s = EvalSettings.coerce(settings)
    start = time.perf_counter()
    base = None
    paired_speed = s.speed and base_model is not None
    each = dataclasses.replace(s, speed=False) if paired_speed else s
    if base_model is not None:
        log("Evaluating the base model")
        with as_base(base_model) as base_view:  # a SharedBase view runs as the unpruned model here
            base = evaluate_model(base_view, tokenizer, each, model_id=base_id, revision=base_revision, model_dir=base_dir,
                                  log=log)
    log("Evaluating the pruned model")
    pruned = evaluate_model(pruned_model, tokenizer, each, model_dir=pruned_dir, log=log)
    generation = fidelity_of_pair(base_model, pruned_model, tokenizer, s, log=log) if base_model is not None else None
    speed = speed_of_pair(base_model, pruned_model, tokenizer, s, base_dir=base_dir, pruned_dir=pruned_dir, log=log) if paired_speed else None
    return evaluation_section(s, base, pruned, time.perf_counter() - start, speed_pair=speed, generation=generation)


def speed_of_pair(base_model, pruned_model, tokenizer, settings: EvalSettings, *, base_dir=None, pruned_dir=None,
                  log: Log = print) -> dict[str, Any]:
    """``measure_speed_pair`` with the settings' protocol (both models on the settings' device)."""
    s = settings
    if s.device is not None:
        with as_base(base_model) as base:  # a SharedBase: its held-aside layers move too
            base.to(s.device)
        pruned_model.to(s.device)
    log(f"Speed: base and pruned interleaved, {s.speed_warmup} warm-up + {s.speed_repeats} timed rounds each; "
        f"prefill {s.prompt_len} tokens, decode {s.decode_tokens} tokens, batch {s.speed_batch_size}")
    return measure_speed_pair(base_model, pruned_model, tokenizer, prompt_len=s.prompt_len, decode_tokens=s.decode_tokens,
                              batch_size=s.speed_batch_size, warmup=s.speed_warmup, repeats=s.speed_repeats,
                              threads=s.speed_threads, base_dir=base_dir, pruned_dir=pruned_dir)


def settings_from_recipe(recipe) -> EvalSettings:
    return EvalSettings(
        tasks=recipe.tasks,
        num_fewshot=recipe.num_fewshot,
        limit=recipe.limit,
        batch_size=recipe.batch_size,
        include_path=recipe.include_path,
        perplexity=recipe.perplexity or "wikitext",
        ppl_max_tokens=recipe.perplexity_tokens,
        generation=held_out_text(recipe.perplexity),
        device=recipe.device,
    )


def evaluate_for_recipe(base_model, model, tokenizer, recipe, *, log: Log = print) -> dict[str, Any]:
    """The pipeline's evaluation stage. When the recipe does not name a perplexity text and WikiText cannot be
    loaded (offline), perplexity is skipped with a note instead of failing the run."""
    from hf_layerprune.runtime import distributed

    if distributed.is_distributed():  # the pipeline calls this on rank 0 only (distributed.on_main)
        log(f"Evaluating on rank 0 alone ({distributed.world().size} processes): lm-eval shares out only models it loads itself")
    s = settings_from_recipe(recipe)
    if not recipe.perplexity:
        s.perplexity = reachable_text(s.perplexity, "perplexity", log)
    s.generation = reachable_text(s.generation, "generation fidelity", log)
    base_id = getattr(recipe, "model", None)
    section = evaluate_pair(base_model, model, tokenizer, s, base_id=base_id, base_revision=recipe.revision, log=log)
    if quantized.is_4bit(model):  # `--load-in-4bit`: both evaluated as loaded, the adapter unmerged
        record = quantized.describe(model)
        section["settings"].update(dtype=f"4-bit NF4, {record['compute_dtype']} compute", quantization=record)
    if s.perplexity is None and not recipe.perplexity:
        section["perplexity_skipped"] = "WikiText-2 was not reachable; pass --perplexity FILE"
    if base_model is not None and "generation" not in section:
        section["generation_skipped"] = ("no held-out text was reachable (WikiText-2 test, or --perplexity FILE)"
                                         if s.generation is None else "no document of the held-out text is long enough")
    return section
