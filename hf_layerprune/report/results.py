"""Arithmetic over stored evaluation results (no model, no torch): what the evaluation stage computes once and the
card, `summary` and `sweep` read back from any report, old ones included (they may lack the stored comparison).

- ``compare``: per task and metric, base vs pruned (delta, retention);
- ``main_metric``: the metric that stands for a task;
- ``plausibility``: speed-ups beyond what the removed layers can explain;
- ``retentions``: the generation-fidelity headline."""

from __future__ import annotations

from typing import Any


def _retention(base: float, pruned: float, higher_is_better: bool | None) -> float | None:
    """% of the base score kept: pruned/base for higher-is-better metrics, base/pruned for lower-is-better ones."""
    if higher_is_better is False:
        return 100.0 * base / pruned if pruned else None
    return 100.0 * pruned / base if base else None


def compare(base: dict[str, Any] | None, pruned: dict[str, Any]) -> dict[str, Any]:
    """{task: {metric: {base, pruned, delta, retention_pct, higher_is_better}}} for metrics present in both."""
    out: dict[str, Any] = {}
    for task, metrics in (pruned or {}).items():
        for metric, p in metrics.items():
            b = ((base or {}).get(task) or {}).get(metric)
            if not b or b.get("value") is None or p.get("value") is None:
                continue
            hib = p.get("higher_is_better", b.get("higher_is_better"))
            out.setdefault(task, {})[metric] = {
                "base": b["value"],
                "pruned": p["value"],
                "delta": p["value"] - b["value"],
                "retention_pct": _retention(b["value"], p["value"], hib),
                "higher_is_better": hib,
            }
    return out


ACCURACY_METRICS = ("acc_norm", "acc", "exact_match", "f1")  # the main metric of a task, in this order


def main_metric(metrics: dict[str, Any]) -> str | None:
    """The metric that stands for a task in averages and plots: acc_norm when the task has it, else acc, ..."""
    for name in ACCURACY_METRICS:
        if name in metrics:
            return name
    return None


def plausible_speedup(base: dict[str, Any], pruned: dict[str, Any]) -> tuple[float | None, str | None]:
    """The largest speed-up removing layers can explain: the ratio of decoder-layer parameters (all per-token
    compute and weight bytes of the layers go, none of the embedding, head or framework overhead does), else of
    layers, parameters or weight bytes, whichever is largest. (bound, what it is based on)."""
    candidates = []
    for key, label in (("layer_parameters", "decoder-layer parameters"), ("num_layers", "decoder layers"),
                       ("parameters", "parameters"), ("weights_bytes", "weight bytes")):
        b, p = base.get(key), pruned.get(key)
        if isinstance(b, (int, float)) and isinstance(p, (int, float)) and b > 0 and p > 0:
            candidates.append((b / p, f"{label} {b:,} → {p:,}"))
    if not candidates:
        return None, None
    return max(candidates)


def plausibility(speed: dict[str, Any]) -> dict[str, Any] | None:
    """Flag measured speed-ups beyond what the removed layers can explain by more than their spread.

    ``speed``: the report's ``evaluation.speed`` ({"base", "pruned"} and, from ``measure_speed_pair``,
    "speedup": {phase: {"median", "spread"}}). Old reports (one measurement per model, no spread) are checked with a
    spread of 0. Returns {"bound", "basis", phase: {"speedup", "spread", "flagged"}, "flagged"} or None.
    """
    base, pruned = speed.get("base") or {}, speed.get("pruned") or {}
    bound, basis = plausible_speedup(base, pruned)
    if bound is None:
        return None
    out: dict[str, Any] = {"bound": bound, "basis": basis, "flagged": False}
    measured = speed.get("speedup") or {}
    for phase, key in (("prefill", "prefill_tokens_per_s"), ("decode", "decode_tokens_per_s")):
        rec = measured.get(phase)
        if isinstance(rec, dict) and isinstance(rec.get("median"), (int, float)):
            ratio, spread = rec["median"], rec.get("spread") or 0.0
        elif isinstance(base.get(key), (int, float)) and isinstance(pruned.get(key), (int, float)) and base[key] > 0:
            ratio, spread = pruned[key] / base[key], 0.0
        else:
            continue
        flagged = ratio - bound > spread
        out[phase] = {"speedup": ratio, "spread": spread, "flagged": flagged}
        out["flagged"] = out["flagged"] or flagged
    return out


def retentions(generation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The card's and the summary's generation headline: last-word retention ± SE, top-1 agreement, KL."""
    s = (generation or {}).get("summary") if isinstance(generation, dict) else None
    if not isinstance(s, dict) or s.get("top1") is None:
        return None
    lw = s.get("last_word") if isinstance(s.get("last_word"), dict) else {}
    return {"top1": s["top1"], "top1_se": s.get("top1_se"), "kl": s["kl"], "kl_se": s.get("kl_se"),
            "docs": s.get("docs"), "seq_len": ((generation.get("settings") or {}).get("seq_len")),
            "last_word_retention": lw.get("retention_pct"), "last_word_se": lw.get("retention_se_pts"),
            "last_word_base": lw.get("base"), "last_word_pruned": lw.get("pruned"), "targets": lw.get("targets")}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers that summarise a pruned model's evaluation (sweep points, CI summaries).

    {"mean_accuracy", "mean_accuracy_base", "retention_pct", "retention_se_pts", "accuracy_tasks" (how many tasks
    averaged), "excluded_tasks", "perplexity", "perplexity_base", "perplexity_seq_len"}; values are None when the
    report lacks them. With per-document scores (``evaluation.paired``) it is the paired headline: the tasks where the
    base model is clearly above chance/majority. Otherwise the mean is over top-level tasks of each task's main
    metric (``main_metric``), on the tasks the base has too when it exists.
    """
    ev = report.get("evaluation") or {}
    ppl = ev.get("perplexity") or {}
    p_ppl, b_ppl = ppl.get("pruned") or {}, ppl.get("base") or {}
    perplexities = {"perplexity": p_ppl.get("perplexity"), "perplexity_base": b_ppl.get("perplexity"),
                    "perplexity_seq_len": (p_ppl or b_ppl).get("seq_len")}
    paired = (ev.get("paired") or {}).get("headline")
    if isinstance(paired, dict) and paired.get("tasks"):  # the paired headline: only tasks above chance/majority
        return {"mean_accuracy": paired["pruned"], "mean_accuracy_base": paired["base"],
                "retention_pct": paired["retention_pct"], "retention_se_pts": paired.get("retention_se_pts"),
                "accuracy_tasks": len(paired["tasks"]), "excluded_tasks": sorted(paired.get("excluded") or {}),
                **perplexities}
    pruned, base = ev.get("pruned") or {}, ev.get("base") or {}
    pairs = []
    for task, metrics in pruned.items():
        if not isinstance(metrics, dict) or any(isinstance(r, dict) and r.get("parent") for r in metrics.values()):
            continue
        name = main_metric(metrics)
        if name is None or not isinstance((metrics[name] or {}).get("value"), (int, float)):
            continue
        b = ((base.get(task) or {}).get(name) or {}).get("value")
        pairs.append((metrics[name]["value"], b if isinstance(b, (int, float)) else None))
    both = [(p, b) for p, b in pairs if b is not None]
    used = both if base and both else pairs
    mean = sum(p for p, _ in used) / len(used) if used else None
    mean_base = sum(b for _, b in both) / len(both) if base and both else None
    return {
        "mean_accuracy": mean,
        "mean_accuracy_base": mean_base,
        "retention_pct": 100.0 * mean / mean_base if mean is not None and mean_base else None,
        "retention_se_pts": None,
        "accuracy_tasks": len(used),
        "excluded_tasks": [],
        **perplexities,
    }
