"""`hf-layerprune analyze MODEL [--metric all] [--drop N] [--json scores.json] [--plot scores.png]`."""


import functools
import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from hf_layerprune.cli.app import app
from hf_layerprune.cli.options import RegistryHelp, RECIPE_OPTIONS, build_recipe
from hf_layerprune.runtime.errors import ConfigError, cli_errors

console = Console()
log_console = Console(stderr=True)

SHARED = ("revision", "drop", "granularity", "metric", "selection", "protect", "calibration", "calibration_samples",
          "seq_len", "seed", "text_column", "dtype", "device", "allow_pickle")
ANALYZE_OPTIONS = [p for p in RECIPE_OPTIONS if p.name in SHARED]


def with_analyze_options(func):
    """Add the recipe options `analyze` shares with `prune` (same flags, same help)."""
    sig = inspect.signature(func)
    own = [p for p in sig.parameters.values() if p.name != "options"]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        options = {name: kwargs.pop(name) for name in SHARED if name in kwargs}
        return func(*args, options=options, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + ANALYZE_OPTIONS)  # type: ignore[attr-defined]
    return wrapper


@app.command(cls=RegistryHelp)
@cli_errors
@with_analyze_options
def analyze(
    model: Annotated[str, typer.Argument(help="Hub model id, local model directory, or .gguf file.")],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write every score as JSON (docs/scoring.md).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG: heatmaps for block metrics, bars otherwise.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Calibration sequences per forward pass.")] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Score every layer (or sub-layer) with one, several (comma-separated) or `all` metrics; suggest layers for --drop."""
    from hf_layerprune.surgery.loading import load_model
    from hf_layerprune.scoring import analyze as run_analysis, default_metric

    from hf_layerprune.surgery.loading import check_device, torch_dtype
    from hf_layerprune.runtime.outputs import check_output_file, model_paths
    from hf_layerprune.card.plots_scoring import check_plot_path

    metric_spec = options.pop("metric", None)
    recipe = build_recipe(model, options)
    check_output_file(json_path, "--json", model_paths(model))
    check_output_file(plot, "--plot", model_paths(model))
    check_plot_path(plot)
    if json_path and plot and json_path.expanduser().resolve() == plot.expanduser().resolve():
        raise ConfigError(f"--json and --plot both name {json_path}; give two files")
    check_device(recipe.device)
    torch_dtype(recipe.dtype)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    metric_spec = metric_spec or default_metric(recipe.granularity)
    if metric_spec == "auto":  # the default pipeline's choice: show the metrics it chooses between
        from hf_layerprune.flow.auto import AUTO_METRICS

        metric_spec = ",".join(AUTO_METRICS)
    log = lambda msg: log_console.print(msg, highlight=False)  # noqa: E731
    from hf_layerprune.runtime.progress import Display

    with Display("auto") as display:  # the libraries' bars and warnings go through our display, as in `prune`
        display.message(f"Loading {model}")
        loaded, tokenizer = load_model(
            model, revision=recipe.revision, dtype=recipe.dtype, device=recipe.device, allow_pickle=recipe.allow_pickle,
            need_tokenizer=False,
        )
        result = run_analysis(
            loaded, tokenizer, metric_spec, granularity=recipe.granularity, calibration=recipe.calibration,
            samples=recipe.calibration_samples, seq_len=recipe.seq_len, seed=recipe.seed,
            text_column=recipe.text_column, drop=recipe.drop, selection=recipe.selection, protect=recipe.protect,
            batch_size=batch_size, log=display.message,
        )
    result = {"model": model, **result}
    from hf_layerprune.runtime import distributed

    if not distributed.is_main():  # several processes scored their shares; rank 0 prints and writes
        return
    print_tables(result)
    if json_path:
        from hf_layerprune.runtime.outputs import write_text_atomic

        write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
        log(f"[green]Wrote[/green] {json_path}")
    if plot:
        from hf_layerprune.card.plots_scoring import plot_analysis

        plot_analysis(result, plot)
        log(f"[green]Wrote[/green] {plot}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_tables(result: dict[str, Any]) -> None:
    metrics = result["metrics"]
    unit = "layer" if result["granularity"] == "block" else result["granularity"]
    per_unit = {k: v for k, v in metrics.items() if "blocks" not in v["scores"]}
    if per_unit:
        table = Table(title=f"Importance per {unit} (* = suggested for --drop {result['drop']})" if result["drop"] else f"Importance per {unit}")
        table.add_column(unit, justify="right")
        for name, entry in per_unit.items():
            arrow = "↑" if entry["higher_is_more_important"] else "↓"
            table.add_column(f"{name} {arrow}", justify="right")
        for u in range(result["num_layers"]):
            row = [str(u)]
            for entry in per_unit.values():
                values = entry["scores"].get("per_layer") or entry["scores"].get("per_unit")
                mark = "*" if u in (entry.get("selected") or []) else ""
                row.append(_fmt(values[u]) + mark)
            table.add_row(*row)
        console.print(table)
    for name, entry in metrics.items():
        if "blocks" not in entry["scores"]:
            continue
        best = min if entry["higher_is_more_important"] else max
        table = Table(title=f"{name}: best block of n {unit}s ({'lower' if entry['higher_is_more_important'] else 'higher'} = removable)")
        for col in ("n", "start", "layers", "score"):
            table.add_column(col, justify="right")
        for n, values in entry["scores"]["blocks"].items():
            start = values.index(best(values))
            style = "bold" if result["drop"] and int(n) == result["drop"] else None
            table.add_row(n, str(start), f"{start}-{start + int(n) - 1}", _fmt(values[start]), style=style)
        console.print(table)
    if result["drop"]:
        table = Table(title=f"Suggested {unit}s to remove for --drop {result['drop']} (0-based)")
        for col in ("metric", "selection", "remove"):
            table.add_column(col)
        for name, entry in metrics.items():
            table.add_row(name, entry["selection"], ",".join(map(str, entry["selected"] or [])))
        console.print(table)
