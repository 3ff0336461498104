"""Plots of layer-importance scores: a start x size heatmap for block metrics, bars for per-unit metrics.

``plot_analysis(result, path)`` draws one panel per metric of an `analyze` result (see docs/scoring.md) and
writes a PNG. Suggested units for ``--drop`` are outlined (heatmap) or coloured (bars).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def check_plot_path(path: str | Path | None) -> None:
    """--plot's format is its suffix: one matplotlib writes, checked before any work."""
    if path is None:
        return
    from matplotlib.backend_bases import FigureCanvasBase

    from hf_layerprune.runtime.errors import ConfigError

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(path).suffix.lower().lstrip(".") not in formats:
        raise ConfigError(f"--plot {path}: give a file ending in one of {', '.join('.' + f for f in sorted(formats))}")


def plot_analysis(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = result["metrics"]
    if not metrics:
        raise ValueError("nothing to plot: the analysis has no metrics")
    count = len(metrics)
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, entry) in zip(axes.flat, metrics.items()):
        scores = entry["scores"]
        if "blocks" in scores:
            _heatmap(ax, fig, name, entry)
        else:
            _bars(ax, name, entry, result.get("granularity", "block"))
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    fig.suptitle(f"Layer importance ({result.get('model_type', '')}, {result.get('num_layers', '?')} layers)")
    fig.tight_layout()
    from hf_layerprune.runtime.outputs import atomic_file

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def _heatmap(ax, fig, name: str, entry: dict[str, Any]) -> None:
    import numpy as np

    blocks = entry["scores"]["blocks"]
    sizes = sorted(int(n) for n in blocks)
    width = len(blocks[str(sizes[0])])
    grid = np.full((len(sizes), width), np.nan)
    for row, n in enumerate(sizes):
        values = blocks[str(n)]
        grid[row, : len(values)] = values
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis",
                      extent=(-0.5, width - 0.5, sizes[0] - 0.5, sizes[-1] + 0.5))
    fig.colorbar(image, ax=ax, fraction=0.046)
    selected = entry.get("selected")
    if selected:
        ax.scatter([selected[0]], [len(selected)], marker="s", s=60, facecolors="none", edgecolors="red")
    direction = "higher = more important" if entry["higher_is_more_important"] else "higher = less important"
    ax.set_title(f"{name} ({direction})", fontsize=9)
    ax.set_xlabel("first layer of the block")
    ax.set_ylabel("block size n")


def _bars(ax, name: str, entry: dict[str, Any], granularity: str) -> None:
    scores = entry["scores"].get("per_layer") or entry["scores"].get("per_unit") or []
    selected = set(entry.get("selected") or [])
    values = [float("nan") if v is None else v for v in scores]
    colors = ["tab:red" if i in selected else "tab:blue" for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors)
    finite = [v for v in values if v == v]
    if finite and min(finite) > 0 and max(finite) - min(finite) < 0.2 * max(finite):  # e.g. perplexities
        spread = max(finite) - min(finite) or max(finite) * 0.01
        ax.set_ylim(min(finite) - 0.2 * spread, max(finite) + 0.2 * spread)
    direction = "higher = more important" if entry["higher_is_more_important"] else "higher = less important"
    unit = "layer" if granularity == "block" else f"{granularity} sub-layer"
    ax.set_title(f"{name} ({direction})", fontsize=9)
    ax.set_xlabel(unit + (" (red: suggested)" if selected else ""))
    ax.set_ylabel("score")
