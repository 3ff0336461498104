"""Depth sweep: one model load and one scoring pass, then one pruned output per depth, with a Pareto plot.

Greedy metrics are run once to the deepest cut and every shallower depth takes a prefix of the greedy order
(the greedy path is the same whatever the target); other metrics score once and select per depth from the same
scores. Each variant is cut from the loaded model as a reversible patch (`base_view.trial`: no copy of the model),
healed, evaluated and saved as `prune` would, then
every card gets the sweep's Pareto plot (parameters vs mean accuracy, or vs perplexity without lm-eval tasks).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable

from hf_layerprune.runtime import distributed

from hf_layerprune.flow import stages
from hf_layerprune.flow.auto import auto_context, auto_select
from hf_layerprune.surgery.base_view import trial
from hf_layerprune.flow.checks import check_recipe, check_source_layers, check_target_against, source_config, source_paths
from hf_layerprune.runtime.errors import ConfigError, OutputError
from hf_layerprune.evaluation import headline
from hf_layerprune.hub import _model_name
from hf_layerprune.hub import resolved_revision
from hf_layerprune.surgery.loading import resolve_source
from hf_layerprune.runtime.outputs import check_output_dir, check_path
from hf_layerprune.flow.pipeline import Timer, heal_and_evaluate, load, save
from hf_layerprune.card.plots import plot_pareto
from hf_layerprune.recipe import AUTO, Recipe
from hf_layerprune.flow.finish import card, look_up_base_card
from hf_layerprune.report import Report, ScoringSection, SourceSection, SweepSection
from hf_layerprune.surgery.layers import side_files
from hf_layerprune.scoring import build_context, get_metric, run_metric

Log = Callable[[str], None]
PARETO_PNG = "sweep_pareto.png"


def variant_dir(root: Path, base_model: str, num_layers_after: int) -> Path:
    return root / f"{_model_name(base_model)}-pruned-{num_layers_after}L"


def select_depths(model, tokenizer, recipe: Recipe, depths: list[int],
                  log: Log) -> dict[int, tuple[list[int], ScoringSection]]:
    """{depth: (removed layers, scoring section)} from one calibration set and one capture pass."""
    return {n: (removed, record if isinstance(record, ScoringSection) else ScoringSection.from_dict(record))
            for n, (removed, record) in _select_depths(model, tokenizer, recipe, depths, log).items()}


def _select_depths(model, tokenizer, recipe: Recipe, depths: list[int], log: Log) -> dict[int, tuple[list[int], Any]]:
    if recipe.metric_name == AUTO:  # one capture pass; candidates judged per depth
        shared = auto_context(model, tokenizer, recipe, log)
        return {n: auto_select(model, tokenizer, dataclasses.replace(recipe, drop=n), shared=shared, log=log)
                for n in depths}
    metric = get_metric(recipe.metric_name)
    ctx, calibration = build_context(
        model, tokenizer, [metric], granularity="block", calibration=recipe.calibration,
        samples=recipe.calibration_samples, seq_len=recipe.seq_len, seed=recipe.seed, text_column=recipe.text_column,
        log=log,
    )
    strategy = recipe.selection or metric.default_selection
    out: dict[int, tuple[list[int], dict]] = {}
    if strategy == "greedy":
        deepest = run_metric(metric, ctx, drop=max(depths), selection=strategy, protect=recipe.protect)
        for n in depths:
            record = {**deepest, "selected": sorted(deepest["greedy_order"][:n]), "calibration": calibration,
                      "sweep_prefix_of": max(depths)}
            out[n] = (record["selected"], record)
        return out
    for n in depths:
        record = run_metric(metric, ctx, drop=n, selection=strategy, protect=recipe.protect)
        record["calibration"] = calibration
        out[n] = (record["selected"], record)
    return out


def run_sweep(recipe: Recipe, depths: list[int], root: str | Path, *, command: str | None = None,
              log: Log = print) -> list[Path]:
    """One output per depth under `root` (`<model>-pruned-<N>L`): load and score once, then per depth cut, heal,
    evaluate and save as `prune` would (pipeline.py's stages), each as a reversible patch of the one loaded model."""
    if not depths or len(set(depths)) != len(depths):
        raise ConfigError("give distinct depths, e.g. --drop 4,8,12")
    if recipe.granularity != "block":
        raise ConfigError("sweep removes whole layers; use prune --granularity for sub-layers")
    if recipe.target is not None:
        raise ConfigError("sweep takes depths (--drop 4,8,12); a budget is one prune: prune --target params=F")
    if recipe.load_in_4bit:  # each depth is a reversible patch; an adapter trained in place is not undone
        raise ConfigError("sweep does not take --load-in-4bit; run prune --load-in-4bit once per depth")
    check_recipe(dataclasses.replace(recipe, drop=max(depths), layers=None))
    recipe.resolve_defaults()
    root = Path(root)
    source = resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle)
    sources = source_paths(source)
    if root.exists() and not root.is_dir():
        raise OutputError(f"--output-dir {root} exists and is not a directory")
    check_path(root, "--output-dir", sources, directory=True)
    config = source_config(source, trust_remote_code=recipe.trust_remote_code)
    check_source_layers(source, config)
    if source.kind == "dir":
        side_files(source.path)  # no side file is a link out of the folder
    for n in depths:
        check_target_against(dataclasses.replace(recipe, drop=n, layers=None), config.num_hidden_layers)
    targets = {n: variant_dir(root, source.name, config.num_hidden_layers - n) for n in depths}

    def checks() -> bool:  # rank 0 alone in a multi-process launch (distributed.py); True when it made the root
        if not root.exists():
            check_output_dir(root, False, sources)
        else:
            for path in targets.values():
                check_output_dir(path, recipe.overwrite, sources)
        made = not root.exists()
        root.mkdir(exist_ok=True)
        return made

    made_root = distributed.on_main(checks, share=True)
    try:
        return _sweep(recipe, depths, source, targets, command, log)
    except BaseException:
        if made_root and distributed.is_main() and not any(root.iterdir()):
            root.rmdir()  # a failed sweep leaves no empty root behind
        raise


def _sweep(recipe: Recipe, depths: list[int], source, targets: dict[int, Path], command: str | None,
           log: Log) -> list[Path]:
    timer = Timer()
    revision = resolved_revision(source) if source.kind == "hub" else source.revision  # as `prune` records it
    loaded = Report(SourceSection(base_model=source.name, base_revision=revision), command=command,
                    **distributed.world_record())
    model, tokenizer = load(dataclasses.replace(recipe, drop=max(depths)), source, loaded, timer, log)
    look_up_base_card(loaded, model=recipe.model)  # once for every variant (each report is a copy of `loaded`)
    needs_base = recipe.evaluate or recipe.heal != "none"
    with timer.stage("score"):
        selections = select_depths(model, tokenizer, recipe, sorted(depths), log)
    outputs, reports = [], []
    for n in sorted(depths):
        variant = dataclasses.replace(recipe, drop=n, layers=None, output_dir=str(targets[n]))
        report = dataclasses.replace(copy.deepcopy(loaded), scoring=selections[n][1])  # typed by select_depths
        vtimer = Timer()
        vtimer.timings.update(timer.timings)
        with trial(model) as base:  # cut, heal, evaluate and save in place; undone before the next depth
            with vtimer.stage("cut"):
                report.cut = stages.cut(model, selections[n][0], log=log)
            heal_and_evaluate(model, tokenizer, base if needs_base else None, variant, report, vtimer, log)
            outputs.append(save(model, tokenizer, variant, source, report, vtimer))
            reports.append(report)
    distributed.on_main(add_pareto, outputs, reports)
    return outputs


def sweep_points(outputs: list[Path], reports: list[Report]) -> list[dict[str, Any]]:
    """One point per variant: depth, parameters, and the quality numbers its report has."""
    return [{"output": out.name, "num_layers_after": report.cut.num_layers_after,
             "removed_layers": report.cut.removed_layers, "parameters": report.cut.parameters_after,
             "parameters_before": report.source.parameters_before, **headline(report.to_dict())}
            for out, report in zip(outputs, reports)]


def add_pareto(outputs: list[Path], reports: list[Report]) -> None:
    """Add the sweep's points and Pareto plot to every variant's report (kept in memory from its run) and write its
    layerprune.json and card again."""
    points = sweep_points(outputs, reports)
    for out, report in zip(outputs, reports):
        report.sweep = SweepSection.from_dict({"points": points, "plot": PARETO_PNG})
        plot_pareto(points, out / PARETO_PNG, current=out.name)
        card(out, report)
