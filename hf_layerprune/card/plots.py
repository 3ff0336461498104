"""Plots for the model card: layer scores, healing loss, before/after evaluation, depth-sweep Pareto front.

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global backend
change), writes a PNG and returns its path. PNG metadata is fixed so that re-rendering gives the same bytes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

REMOVED_COLOR = "#d62728"
KEPT_COLOR = "#1f77b4"
BASE_COLOR = "#7f7f7f"
PRUNED_COLOR = "#1f77b4"


def _figure(width: float = 7.0, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        out.append(f if math.isfinite(f) else float("nan"))
    return out


def plot_layer_scores(scoring: dict[str, Any], removed: Sequence[int], path: str | os.PathLike, *,
                      removed_sublayers: dict[str, Sequence[int]] | None = None) -> Path | None:
    """Per-layer (or per-block-start, or per-sub-layer) importance with the removed units highlighted.

    ``scoring`` is the report's ``scoring`` section. Returns None when it holds no plottable scores.
    """
    scores = scoring.get("scores") or {}
    metric = str(scoring.get("metric") or "score")
    higher = scoring.get("higher_is_more_important")
    ylabel = f"{metric} score" + ("" if higher is None else ("\n(higher = more important)" if higher else "\n(lower = more important)"))
    removed = {int(i) for i in removed or []}
    blocks = scores.get("blocks") if isinstance(scores.get("blocks"), dict) else {}
    if blocks and scoring.get("selection") == "contiguous" and str(len(removed)) in blocks:
        # a contiguous choice was made on block scores (Gromov et al., LLM-Streamline): show those
        return _plot_blocks(blocks, removed, path, metric, ylabel)
    if isinstance(scores.get("per_layer"), list) and scores["per_layer"]:
        values = _finite(scores["per_layer"])
        labels, colors = list(range(len(values))), [REMOVED_COLOR if i in removed else KEPT_COLOR for i in range(len(values))]
        xlabel = "layer (0-based)"
    elif isinstance(scores.get("per_unit"), list) and scores["per_unit"]:
        values = _finite(scores["per_unit"])
        unit = str(scores.get("unit") or "unit")
        gone = {int(i) for i in ((removed_sublayers or {}).get(unit) or removed)}
        labels, colors = list(range(len(values))), [REMOVED_COLOR if i in gone else KEPT_COLOR for i in range(len(values))]
        xlabel = f"layer (0-based), {unit} sub-layer"
    elif isinstance(scores.get("blocks"), dict) and scores["blocks"]:
        return _plot_blocks(scores["blocks"], removed, path, metric, ylabel)
    else:
        return None
    fig = _figure(max(5.0, min(14.0, 0.18 * len(values) + 3)))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(labels, [0 if math.isnan(v) else v for v in values], color=colors, width=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Layer importance ({metric}); red = removed")
    step = max(1, len(values) // 16)
    ax.set_xticks(list(range(0, len(values), step)))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _plot_blocks(blocks: dict[str, Any], removed: set[int], path, metric: str, ylabel: str) -> Path | None:
    sizes = sorted((int(n), _finite(v)) for n, v in blocks.items() if isinstance(v, list) and v)
    if not sizes:
        return None
    chosen = len(removed)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for n, values in sizes:
        emphasis = n == chosen
        ax.plot(range(len(values)), values, marker="o" if emphasis else None, linewidth=2.2 if emphasis else 0.8,
                alpha=1.0 if emphasis else 0.35, label=f"n={n}" if emphasis or len(sizes) <= 6 else None,
                color=REMOVED_COLOR if emphasis else None)
    if removed and chosen in dict(sizes):
        start = min(removed)
        values = dict(sizes)[chosen]
        if 0 <= start < len(values):
            ax.axvline(start, color=REMOVED_COLOR, linestyle="--", linewidth=1)
    ax.set_xlabel("first layer of the block (0-based)")
    ax.set_ylabel(ylabel.replace("score", "block score", 1))
    ax.set_title(f"Block scores ({metric}) by block size n; dashed = removed block")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_healing_loss(losses: Sequence[float], path: str | os.PathLike, *, title: str = "Healing loss") -> Path | None:
    values = _finite(losses or [])
    if not values:
        return None
    fig = _figure(6.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(1, len(values) + 1), values, color=KEPT_COLOR, linewidth=1.2)
    if len(values) >= 20:  # a moving average makes noisy per-step losses readable
        k = max(5, len(values) // 20)
        smooth = [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]
        ax.plot(range(1, len(values) + 1), smooth, color=REMOVED_COLOR, linewidth=1.5, label=f"moving average ({k})")
        ax.legend(fontsize=8)
    ax.set_xlabel("logged step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_evaluation(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Grouped bars, base vs pruned; ``rows`` = [{"label", "base", "pruned"}] (values in the same unit)."""
    rows = [r for r in rows if r.get("pruned") is not None]
    if not rows:
        return None
    fig = _figure(max(5.0, 1.0 + 0.9 * len(rows)), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(rows)))
    has_base = any(r.get("base") is not None for r in rows)
    width = 0.38 if has_base else 0.6
    if has_base:
        ax.bar([x - width / 2 for x in xs], [r.get("base") or 0 for r in rows], width, label="base", color=BASE_COLOR)
    ax.bar([x + (width / 2 if has_base else 0) for x in xs], [r["pruned"] for r in rows], width, label="pruned",
           color=PRUNED_COLOR)
    marked = False
    for x, r in zip(xs, rows):  # the chance/majority rate a task's score must beat (paired evaluations)
        if r.get("baseline") is not None:
            ax.hlines(r["baseline"], x - 0.45, x + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label=None if marked else "chance / majority")
            marked = True
    ax.set_xticks(xs)
    ax.set_xticklabels([str(r["label"]) + ("\n(not in headline)" if r.get("excluded") else "") for r in rows],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("Benchmarks before and after pruning")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_pareto(points: Sequence[dict[str, Any]], path: str | os.PathLike, *, current: str | None = None) -> Path | None:
    """Parameters vs quality for the variants of a depth sweep (``sweep_points``; each has ``parameters`` and the
    ``headline`` numbers). Quality is the mean accuracy when every point has one, else perplexity (log scale,
    lower is better). The base model is drawn as a star when the points carry its numbers; the Pareto front is
    the line through the points no other point beats on both axes; ``current`` (an ``output`` name) is circled."""
    use_acc = bool(points) and all(not math.isnan(_finite([p.get("mean_accuracy")])[0]) for p in points)
    key, base_key = ("mean_accuracy", "mean_accuracy_base") if use_acc else ("perplexity", "perplexity_base")
    pts = [p for p in points if p.get(key) is not None and p.get("parameters")]
    if not pts:
        return None
    scale = 100.0 if use_acc else 1.0
    xs = [p["parameters"] / 1e9 for p in pts]
    ys = [float(p[key]) * scale for p in pts]
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xs, ys, color=PRUNED_COLOR, zorder=3)
    for p, x, y in zip(pts, xs, ys):
        ax.annotate(f"{p.get('num_layers_after', '?')}L", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if current is not None and p.get("output") == current:
            ax.scatter([x], [y], s=160, facecolors="none", edgecolors=REMOVED_COLOR, linewidths=1.5, zorder=4,
                       label="this model")
    better = (lambda a, b: a >= b) if use_acc else (lambda a, b: a <= b)
    front = sorted((x, y) for x, y in zip(xs, ys)
                   if not any(x2 <= x and better(y2, y) and (x2, y2) != (x, y) for x2, y2 in zip(xs, ys)))
    if len(front) > 1:
        ax.plot([f[0] for f in front], [f[1] for f in front], color=PRUNED_COLOR, alpha=0.5, label="Pareto front")
    base = next((p for p in points if p.get(base_key) is not None and p.get("parameters_before")), None)
    if base is not None:
        ax.scatter([base["parameters_before"] / 1e9], [float(base[base_key]) * scale], marker="*", s=160,
                   color=BASE_COLOR, zorder=3, label="base model")
    if not use_acc:
        ax.set_yscale("log")
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel("mean accuracy (%)" if use_acc else "perplexity (lower is better)")
    ax.set_title("Depth sweep: size vs quality")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)
