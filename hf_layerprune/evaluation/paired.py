"""Paired comparison of base and pruned on the same documents: per-task Δ ± paired SE, chance/majority baselines and
the headline retention (docs/evaluation.md, "Headline rule" and "Paired standard errors").

Input: the per-document scores of both models (``lm_eval_runner.compact_samples``: per task ``doc_id``, one list
per metric, and for multiple-choice tasks ``target`` and ``choices``). Output, stored as the report's
``evaluation.paired``:

    {"z": 2.0, "tasks": {task: {metric, docs, base, pruned, base_se, pruned_se, delta, delta_se, measurable,
                                retention_pct, chance, majority, baseline, baseline_kind, included, reason}},
     "headline": {tasks, excluded, base, pruned, delta, delta_se, retention_pct, retention_se_pts, measurable,
                  retention_range} | None}

- A task counts towards the headline only when the base model is clearly above the better of its chance rate
  (mean of 1/number of choices over the evaluated docs) and its majority rate (always answering the most frequent
  gold label of the evaluated docs): base − baseline > ``z`` × SE(base); a task without answer choices
  (generation) must be clearly above 0. Other tasks stay in the table, flagged with the reason.
- Δ = mean over the shared docs of (pruned − base) per doc; its SE is the sample SD of the per-doc differences over
  √n. The two models answer the same questions, so this is far smaller than the two unpaired SEs combined.
- Headline: every included task weighs the same; retention = mean pruned / mean base; the SE of the mean
  difference adds the tasks' paired variances (tasks are independent samples) and is stated in points of
  retention (SE / mean base × 100).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

Z = 2.0  # how many standard errors make a difference "measurable" and a base score "clearly above" its baseline


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def standard_error(xs: list[float]) -> float:
    """Sample standard deviation (n − 1) over √n; 0 for fewer than two values."""
    n = len(xs)
    if n < 2:
        return 0.0
    mu = _mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1) / n)


def baselines(docs: dict[str, Any], keep: set[int] | None = None) -> dict[str, Any]:
    """{"chance", "majority"} of a multiple-choice task over its docs (``keep``: only those doc ids); None where
    the samples do not carry the choices or the gold labels (generation and perplexity tasks)."""
    ids = docs.get("doc_id") or []
    rows = [i for i, d in enumerate(ids) if keep is None or d in keep]
    out: dict[str, Any] = {"chance": None, "majority": None}
    choices, targets = docs.get("choices"), docs.get("target")
    if isinstance(choices, list) and len(choices) == len(ids) and rows:
        out["chance"] = _mean([1.0 / choices[i] for i in rows if choices[i]])
    if isinstance(targets, list) and len(targets) == len(ids) and rows:
        label, count = Counter(targets[i] for i in rows).most_common(1)[0]
        out["majority"] = count / len(rows)
        out["majority_label"] = label
    return out


def compare_task(base_docs: dict[str, Any], pruned_docs: dict[str, Any], metric: str, z: float = Z) -> dict[str, Any] | None:
    """One task's paired numbers on the docs both models were scored on; None when fewer than two are shared."""
    b_of = dict(zip(base_docs.get("doc_id") or [], base_docs.get(metric) or []))
    p_of = dict(zip(pruned_docs.get("doc_id") or [], pruned_docs.get(metric) or []))
    shared = sorted(set(b_of) & set(p_of))
    if len(shared) < 2:
        return None
    xs, ys = [b_of[i] for i in shared], [p_of[i] for i in shared]
    diffs = [y - x for x, y in zip(xs, ys)]
    base, pruned, delta = _mean(xs), _mean(ys), _mean(diffs)
    base_se, delta_se = standard_error(xs), standard_error(diffs)
    rec: dict[str, Any] = {
        "metric": metric,
        "docs": len(shared),
        "base": base,
        "pruned": pruned,
        "base_se": base_se,
        "pruned_se": standard_error(ys),
        "delta": delta,
        "delta_se": delta_se,
        "measurable": abs(delta) >= z * delta_se and delta != 0,
        "retention_pct": 100.0 * pruned / base if base else None,
    }
    rec.update(baselines(base_docs, set(shared)))
    kinds = [(rec[k], k) for k in ("chance", "majority") if rec.get(k) is not None]
    # a generation task has no answer choices: guessing scores about 0, so the base must be clearly above 0
    rec["baseline"], rec["baseline_kind"] = max(kinds, key=lambda kv: kv[0]) if kinds else (0.0, "zero")  # tie: chance
    rec["included"] = base - rec["baseline"] > z * base_se
    if not rec["included"]:
        rec["reason"] = _reason(base, base_se, rec["baseline"], rec["baseline_kind"], z)
    return rec


def _reason(base: float, se: float, baseline: float, kind: str, z: float) -> str:
    """Why a task is left out of the headline, in points: "base 42.0 ≤ majority 62.2"."""
    if base <= baseline:
        return f"base {100 * base:.1f} ≤ {kind} {100 * baseline:.1f}"
    return f"base {100 * base:.1f} is within {z:g} SE (±{100 * z * se:.1f}) of {kind} {100 * baseline:.1f}"


def paired_comparison(base_samples: dict[str, Any], pruned_samples: dict[str, Any], metrics: dict[str, str],
                      z: float = Z) -> dict[str, Any]:
    """Per-task paired comparison for ``metrics`` ({task: main metric}) and the headline over the included tasks."""
    tasks: dict[str, Any] = {}
    for task, metric in metrics.items():
        b, p = (base_samples or {}).get(task), (pruned_samples or {}).get(task)
        if not isinstance(b, dict) or not isinstance(p, dict) or metric not in b or metric not in p:
            continue
        rec = compare_task(b, p, metric, z)
        if rec is not None:
            tasks[task] = rec
    return {"z": z, "tasks": tasks, "headline": headline_of(tasks, z)}


def headline_of(tasks: dict[str, dict[str, Any]], z: float = Z) -> dict[str, Any] | None:
    """Mean retention over the included tasks, with the paired SE of the mean difference; None when none is."""
    used = {t: r for t, r in tasks.items() if r.get("included")}
    if not used:
        return None
    k = len(used)
    base = sum(r["base"] for r in used.values()) / k
    pruned = sum(r["pruned"] for r in used.values()) / k
    delta = pruned - base
    se = math.sqrt(sum(r["delta_se"] ** 2 for r in used.values())) / k
    per_task = [r["retention_pct"] for r in used.values() if r.get("retention_pct") is not None]
    return {
        "tasks": list(used),
        "excluded": {t: r.get("reason") for t, r in tasks.items() if not r.get("included")},
        "base": base,
        "pruned": pruned,
        "delta": delta,
        "delta_se": se,
        "retention_pct": 100.0 * pruned / base if base else None,
        "retention_se_pts": 100.0 * se / base if base else None,
        "measurable": abs(delta) >= z * se and delta != 0,
        "retention_range": [min(per_task), max(per_task)] if per_task else None,
    }
