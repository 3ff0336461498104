"""Score and select: one metric on one ScoringContext, the pipeline hook, and the `analyze` report."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from hf_layerprune.runtime import distributed
from hf_layerprune.runtime.calibration import calibration_batches, calibration_record
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.scoring.base import Metric, Scores, ScoringContext, available_metrics, get_metric
from hf_layerprune.runtime.selection import check_strategy, contiguous, greedy, parse_protect, ranking, topk, window_scores

Log = Callable[[str], None]


def default_batch_size(seq_len: int) -> int:
    """Calibration sequences per micro-batch: about 4096 tokens."""
    return max(1, 4096 // max(seq_len, 1))


def scores_record(scores: Scores, granularity: str) -> dict[str, Any]:
    """JSON form: {"per_layer": [...]} | {"per_unit": [...], "unit": "attention"} | {"blocks": {"n": [...]}}."""
    out: dict[str, Any] = {}
    if scores.blocks is not None:
        out["blocks"] = {str(n): values for n, values in scores.blocks.items()}
    if scores.per_unit is not None:
        if granularity == "block":
            out["per_layer"] = scores.per_unit
        else:
            out.update(per_unit=scores.per_unit, unit=granularity)
    if scores.extra:
        out.update(scores.extra)
    return out


def run_metric(
    metric: Metric,
    ctx: ScoringContext,
    *,
    drop: int | None = None,
    selection: str | None = None,
    protect: Iterable[str | int] | str | None = (),
) -> dict[str, Any]:
    """Scores of `metric` and, when `drop` is given, the units to remove with its (or the given) strategy.

    Returns {"metric", "selection", "granularity", "scores", "selected", "ranking", "higher_is_more_important",
    "seconds"} (+ "greedy_order" and "greedy_steps" for greedy selection)."""
    start = time.perf_counter()
    metric.check_granularity(ctx.granularity)
    strategy = check_strategy(selection or metric.default_selection)
    protected = parse_protect(protect, ctx.num_units)
    higher = metric.higher_is_more_important
    if drop is not None and ctx.granularity == "block" and drop >= ctx.num_units:
        raise ConfigError(f"--drop {drop} must be smaller than the number of layers ({ctx.num_units})")
    record: dict[str, Any] = {"metric": metric.name, "selection": strategy, "granularity": ctx.granularity}
    if metric.config:
        record["options"] = dict(metric.config)
    selected: list[int] | None = None
    if drop is not None and strategy == "greedy":
        history: list[Scores] = []

        def step(removed: list[int], candidates: list[int]):
            history.append(metric.score(ctx, tuple(removed), candidates))
            return history[-1].unit_scores()

        order, steps = greedy(step, drop, ctx.num_units, higher_is_more_important=higher, protected=protected)
        scores = history[0]
        selected = sorted(order)
        rest = [u for u in ranking(steps[-1], higher) if u not in order]
        record.update(greedy_order=order, greedy_steps=[{"removed": u, "scores": s} for u, s in zip(order, steps)])
        record["ranking"] = order + rest
    else:
        scores = ctx.full_scores(metric)
        record["ranking"] = ranking(scores.unit_scores(), higher)
        if drop is not None and strategy == "topk":
            selected = topk(scores.unit_scores(), drop, higher_is_more_important=higher, protected=protected)
        elif drop is not None:
            blocks = scores.blocks[drop] if scores.blocks and drop in scores.blocks else window_scores(scores.unit_scores(), drop)
            selected = contiguous(blocks, drop, higher_is_more_important=higher, protected=protected)
    record.update(
        scores=scores_record(scores, ctx.granularity),
        selected=selected,
        higher_is_more_important=higher,
        seconds=round(time.perf_counter() - start, 3),
    )
    return record


def build_context(
    model, tokenizer, metrics: list[Metric], *, granularity: str = "block", calibration: str = "self",
    samples: int = 32, seq_len: int = 256, seed: int = 0, text_column: str | None = None,
    batch_size: int | None = None, log: Log = print,
) -> tuple[ScoringContext, dict[str, Any] | None]:
    """One calibration set and one ScoringContext shared by `metrics`; returns (ctx, calibration record)."""
    batches, record = None, None
    if any(m.needs_calibration for m in metrics):
        log(f"Calibration: {samples} x {seq_len} tokens from {calibration}")
        batches = distributed.on_main(  # one sampler in a multi-process launch: every rank scores the same text
            calibration_batches, calibration, tokenizer, model=model, samples=samples, seq_len=seq_len, seed=seed,
            text_column=text_column, share=True,
        )
        record = calibration_record(
            calibration, tokenizer, model=model, samples=samples, seq_len=seq_len, seed=seed, text_column=text_column,
            batches=batches,
        )
    ctx = ScoringContext(
        model, batches, granularity=granularity, batch_size=batch_size or default_batch_size(seq_len), seed=seed,
        keep_states=any(m.needs_states for m in metrics), log=log,
    )
    return ctx, record


def select_for_recipe(model, tokenizer, recipe, *, log: Log = print) -> tuple[list[int], dict[str, Any]]:
    """Score with the recipe's metric and select: (sorted 0-based units to remove, the report's "scoring" record).
    `auto` is a strategy above scoring (auto.py; the pipeline's `stages.select` chooses between them)."""
    start = time.perf_counter()
    metric = get_metric(recipe.metric_name)
    metric.check_granularity(recipe.granularity)
    check_strategy(recipe.selection or metric.default_selection)
    ctx, calibration = build_context(
        model, tokenizer, [metric], granularity=recipe.granularity, calibration=recipe.calibration,
        samples=recipe.calibration_samples, seq_len=recipe.seq_len, seed=recipe.seed, text_column=recipe.text_column,
        log=log,
    )
    log(f"Scoring {ctx.num_units} {_unit_word(ctx.granularity)} with {metric.name} ({metric.summary})")
    protect = list(parse_protect(recipe.protect, ctx.num_units))
    if recipe.granularity == "attention" and 0 not in protect:
        protect.append(0)  # the DeciLM export needs attention in its first block (vLLM's nemotron_nas)
        log("Keeping layer 0's attention: the Nemotron-NAS layout needs attention in the first block")
    record = run_metric(metric, ctx, drop=recipe.drop, selection=recipe.selection, protect=protect)
    record["calibration"] = calibration
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record["selected"], record


def expand_metrics(spec: str | Iterable[str], granularity: str, log: Log = print) -> list[Metric]:
    """`all`, one name, or a comma-separated list -> metrics. `all` keeps those that support `granularity`."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ConfigError("give at least one --metric")
    if names == ["all"]:
        metrics = [get_metric(n) for n in available_metrics()]
        skipped = [m.name for m in metrics if granularity not in m.granularities]
        if skipped:
            log(f"Skipping {', '.join(skipped)}: block granularity only")
        return [m for m in metrics if granularity in m.granularities]
    metrics = [get_metric(n) for n in names]
    for m in metrics:
        m.check_granularity(granularity)
    return metrics


def analyze(
    model, tokenizer, metrics: str | Iterable[str] = "all", *, granularity: str = "block", calibration: str = "self",
    samples: int = 32, seq_len: int = 256, seed: int = 0, text_column: str | None = None, drop: int | None = None,
    selection: str | None = None, protect: Iterable[str | int] | str | None = (), batch_size: int | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Every requested metric on one shared calibration set (schema: docs/scoring.md)."""
    chosen = expand_metrics(metrics, granularity, log)
    if selection is not None:
        check_strategy(selection)
    ctx, cal = build_context(
        model, tokenizer, chosen, granularity=granularity, calibration=calibration, samples=samples, seq_len=seq_len,
        seed=seed, text_column=text_column, batch_size=batch_size, log=log,
    )
    out: dict[str, Any] = {
        "model_type": model.config.model_type,
        "num_layers": ctx.num_units,
        "granularity": granularity,
        "drop": drop,
        "calibration": cal,
        "metrics": {},
    }
    for metric in chosen:
        log(f"Scoring with {metric.name}")
        result = run_metric(metric, ctx, drop=drop, selection=selection, protect=protect)
        result["summary"] = metric.summary
        out["metrics"][metric.name] = result
    return out


def _unit_word(granularity: str) -> str:
    return "layers" if granularity == "block" else f"{granularity} sub-layers"
