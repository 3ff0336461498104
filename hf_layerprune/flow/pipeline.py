"""run(recipe) -> Report: the public stages (stages.py) composed, one after another, on one copy of the weights.

Routes (each gives byte-identical weights where they overlap, tests/test_surgery.py):
- streaming (streaming.py): no stage needs the model in memory (explicit --layers, a config-only rule such as
  `last`, or `--offload` scoring; `--heal none`; no evaluation): the safetensors shards are rewritten on disk;
- GGUF surgery (gguf_route.py): a GGUF source cut block by block, quantized blocks copied as they are;
- in memory: load, select, cut, heal, evaluate, save. The unpruned model is a `SharedBase` view over the pruned one
  (base_view.py), so healing targets and base evaluation need no second copy;
- `--rounds N`: select, cut and heal N times, rescoring the healed model;
- sub-layers (`--granularity attention|mlp`): exported as a DeciLM checkpoint, healed and evaluated after reload.
Everything is written to a temporary directory that replaces `recipe.output_dir` only at the end (outputs.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from hf_layerprune.runtime import distributed
from hf_layerprune.surgery.checkpoint import load_checkpoint
from hf_layerprune.flow.checks import preflight, source_paths
from hf_layerprune.flow.gguf_route import card_fields, llama_cpp_gguf_speed, wants_gguf, write_deci_gguf
from hf_layerprune.hub import local_checkpoint
from hf_layerprune.surgery.loading import Source
from hf_layerprune.flow.finish import Timer, write_outputs
from hf_layerprune.flow.memory import summary as memory_summary
from hf_layerprune.runtime.outputs import staging_dir
from hf_layerprune.flow.plan import Plan, make_plan
from hf_layerprune.recipe import Recipe
from hf_layerprune.report import (
    CutSection, GgufSection, PreflightSection, Report, RoundRecord, ScoringSection, SourceSection, SpeedSection,
)
from hf_layerprune.flow.streaming import checkpoint_parameters, run_gguf_surgery, run_streaming, streamed_selection

# `stages` (and through it torch, transformers, the healers and the evaluation) is imported by the routes that load
# the model: the on-disk routes (streaming.py) start cutting without them.

Log = Callable[[str], None]


def run(recipe: Recipe, *, command: str | None = None, log: Log = print) -> Report:
    """Check everything (plan.make_plan), then run the recipe's route; the returned Report is what
    `layerprune.json` holds."""
    return execute(make_plan(recipe), command=command, log=log)


def execute(plan: Plan, *, command: str | None = None, log: Log = print) -> Report:
    """Run a checked plan: the route it chose, one stage after another."""
    recipe, source = plan.recipe, plan.source
    if source.kind == "hub":
        distributed.hub_cache_only()  # ranks > 0: no Hub request from here on
    timer = Timer()
    report = Report(SourceSection(base_model=source.name, base_revision=plan.base_revision), command=command,
                    granularity=recipe.granularity, **distributed.world_record())
    if plan.route != "in-memory" and distributed.is_distributed():  # nothing to split: rank 0 cuts on disk
        log("Several processes, no stage to split (the cut streams on disk): rank 0 does it alone")
    if plan.route == "gguf":  # any llama.cpp architecture: transformers never reads this file
        distributed.on_main(run_gguf_surgery, recipe, source, report, timer, log)
    elif plan.route == "in-memory":
        run_in_memory(recipe, source, report, timer, log, heal=plan.heal)
    else:
        distributed.on_main(run_streaming, recipe, source, report, timer, log,
                            in_memory=lambda src: run_in_memory(recipe, src, report, timer, log, heal=plan.heal))
    if report.memory:
        log(memory_summary(report.memory.to_dict()))
    return report


def load(recipe: Recipe, source: Source, report: Report, timer: Timer, log: Log):
    """The load stage with its pre-flight memory check, timed: (model, tokenizer); fills the report's source."""
    from hf_layerprune.flow import stages

    if not recipe.device_map:  # before loading: refuse a recipe that will not fit, naming what would
        estimate = preflight(recipe, source, log)
        report.preflight = PreflightSection.from_dict(estimate) if estimate is not None else None
    with timer.stage("load"):
        model, tokenizer, section = stages.load(recipe, source, log=log)
    report.source = dataclasses.replace(section, base_revision=report.source.base_revision)
    timer.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return model, tokenizer


def run_in_memory(recipe: Recipe, source: Source, report: Report, timer: Timer, log: Log, heal=None) -> None:
    """Load, select, cut, heal (`heal`: the plan's checked chain), evaluate and save, on one copy of the weights."""
    from hf_layerprune.flow import stages
    from hf_layerprune.surgery.base_view import SharedBase

    streamed = None
    if recipe.offload and stages.uses_metric(recipe):  # score before the model is loaded, one layer at a time
        with timer.stage("score"):
            streamed = streamed_selection(local_checkpoint(source, allow_pickle=recipe.allow_pickle), recipe, log)
    model, tokenizer = load(recipe, source, report, timer, log)
    if recipe.target is not None:
        return run_target(model, tokenizer, recipe, source, report, timer, log)
    base = None
    if recipe.evaluate or recipe.heal != "none":
        # one copy of the weights: the base is a view over the pruned model (kept layers shared, removed layers held
        # aside, changed modules copied on write); the sub-layer route reloads the pruned model, the base is `model`
        base = SharedBase(model) if recipe.granularity == "block" else model
    if recipe.rounds > 1 and stages.uses_metric(recipe) and recipe.granularity == "block" and streamed is None:
        return run_rounds(model, tokenizer, base, recipe, source, report, timer, log, heal)
    with timer.stage("score"):
        removed, report.scoring = streamed or stages.select(model, tokenizer, recipe, log=log)
    if recipe.granularity != "block":
        removed_attention = removed if recipe.granularity == "attention" else []
        removed_mlp = removed if recipe.granularity == "mlp" else []
        return distributed.on_main(finish_sublayer, model, tokenizer, base, removed_attention, removed_mlp, recipe,
                                   source, report, timer, log, heal)
    with timer.stage("cut"):
        report.cut = stages.cut(model, removed, log=log)
    heal_and_evaluate(model, tokenizer, base, recipe, report, timer, log, heal)
    save(model, tokenizer, recipe, source, report, timer, base=base)


def heal_and_evaluate(model, tokenizer, base, recipe: Recipe, report: Report, timer: Timer, log: Log,
                      heal=None) -> None:
    from hf_layerprune.flow import stages

    if recipe.heal != "none":
        with timer.stage("heal"):
            report.healing, report.cut = stages.heal(model, tokenizer, recipe, report.cut, base=base, chain=heal,
                                                     log=log)
    if recipe.evaluate:
        with timer.stage("evaluate"):
            report.evaluation = distributed.on_main(stages.evaluate, base, model, tokenizer, recipe, log=log)


def save(model, tokenizer, recipe: Recipe, source: Source, report: Report, timer: Timer, base=None) -> Path:
    """One writer: rank 0 saves in a multi-process launch (the healed weights are whole on every rank). `base`:
    the unpruned model (a SharedBase view), for the GGUF's speed in llama.cpp."""
    return (distributed.on_main(_save_here, model, tokenizer, recipe, source, report, timer, base)
            or Path(recipe.output_dir))


def _save_here(model, tokenizer, recipe: Recipe, source: Source, report: Report, timer: Timer, base=None) -> Path:
    """The save stage into a staging folder, then layerprune.json and the card; moved into place at the end."""
    from hf_layerprune.flow import stages

    with staging_dir(recipe.output_dir, recipe.overwrite, source_paths(source)) as tmp:
        with timer.stage("save"):
            card = card_fields(report, recipe) if wants_gguf(recipe) else None
            sections = stages.save(model, tokenizer, recipe, tmp, source=source, removed=report.cut.removed_layers,
                                   card=card)
            gguf = sections.pop("gguf", None)
            report.gguf = GgufSection.from_dict(gguf) if gguf is not None else None
            report.other.update(sections)  # sections of other registered formats (formats.OUTPUT_FORMATS)
        gguf_speed(report, recipe, source, tmp, base, timer)
        write_outputs(tmp, report, recipe, timer)
    return Path(recipe.output_dir)


def gguf_speed(report: Report, recipe: Recipe, source: Source, folder: Path, base, timer: Timer,
               log: Log | None = None) -> None:
    """With llama-cpp-python installed, an evaluated run with a GGUF output also times it in llama.cpp against the
    base (gguf_route.llama_cpp_gguf_speed): `evaluation.speed.llama_cpp`. `log`: default the run's display, else
    stderr (stdout is `push`'s URL)."""
    from hf_layerprune.evaluation import llama_cpp_speed, settings_from_recipe
    from hf_layerprune.flow.gguf_route import _stderr_log

    if recipe.evaluate and report.gguf is not None and report.evaluation is not None and llama_cpp_speed.installed():
        log = log or _stderr_log()
        with timer.stage("evaluate"):
            speed = report.evaluation.speed or SpeedSection()
            speed.llama_cpp = llama_cpp_gguf_speed(report.gguf, settings_from_recipe(recipe), source, folder, base, log)
            report.evaluation.speed = speed


def round_sizes(total: int, rounds: int) -> list[int]:
    """Split `total` removals over `rounds` (earlier rounds take the remainder): 8 over 3 -> [3, 3, 2]."""
    rounds = max(1, min(rounds, total))
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


def run_rounds(model, tokenizer, base, recipe: Recipe, source: Source, report: Report, timer: Timer, log: Log,
               heal=None) -> None:
    """Iterative prune -> heal -> rescore: each round scores the current (healed) model and removes its share."""
    from hf_layerprune.flow import stages

    before = model.config.num_hidden_layers
    cut = CutSection(num_layers_after=before, removed_layers=[], kept_layers=list(range(before)))
    rounds = []
    for k, n in enumerate(round_sizes(recipe.drop, recipe.rounds), start=1):
        log(f"Round {k}: removing {n} more layers")
        step = dataclasses.replace(recipe, drop=n, protect=_protect_in_current(recipe.protect, cut.kept_layers))
        with timer.stage("score"):
            removed_now, scoring = stages.select(model, tokenizer, step, log=log)
        removed_original = [cut.kept_layers[i] for i in removed_now]
        with timer.stage("cut"):
            now = stages.cut(model, removed_now, log=log)  # in this round's numbering; mapped back below
        cut = CutSection(num_layers_after=now.num_layers_after, parameters_after=now.parameters_after,
                         removed_layers=sorted(cut.removed_layers + removed_original),
                         kept_layers=[cut.kept_layers[i] for i in now.kept_layers])
        entry = RoundRecord(round=k, removed_layers=sorted(removed_original), scoring=scoring)
        if recipe.heal != "none":
            with timer.stage("heal"):
                entry.healing, cut = stages.heal(model, tokenizer, step, cut, base=base, chain=heal, log=log)
        rounds.append(entry)
    report.rounds, report.scoring = rounds, rounds[-1].scoring
    report.cut = dataclasses.replace(cut, num_layers_after=model.config.num_hidden_layers,
                                     parameters_after=stages.count_parameters(model))
    if recipe.heal != "none":
        report.healing = rounds[-1].healing
    if recipe.evaluate:
        with timer.stage("evaluate"):
            report.evaluation = distributed.on_main(stages.evaluate, base, model, tokenizer, recipe, log=log)
    save(model, tokenizer, recipe, source, report, timer, base=base)


def _protect_in_current(protect: list, original: list[int]) -> list:
    """`--protect` names original layers; in a later round they have new indices (first/last stay words)."""
    out = []
    for item in protect:
        if str(item).lstrip("-").isdigit():
            if int(item) in original:
                out.append(original.index(int(item)))
        else:
            out.append(item)
    return out


def run_target(model, tokenizer, recipe: Recipe, source: Source, report: Report, timer: Timer, log: Log) -> None:
    """`--target`: the plan that meets the budget (budget.py), then a whole-layer cut or a sub-layer export."""
    from hf_layerprune.flow import stages
    from hf_layerprune.surgery.base_view import SharedBase
    from hf_layerprune.flow.budget import plan_for_target
    from hf_layerprune.recipe import default_healer

    with timer.stage("score"):
        whole, attention, section = plan_for_target(model, tokenizer, recipe, log=log)
    report.scoring = ScoringSection.from_dict(section)
    if recipe.heal is None:  # the default healer of the kind of plan chosen
        recipe.heal = default_healer("block" if not attention else "attention")
    needs_base = recipe.evaluate or recipe.heal != "none"
    if not attention:  # whole layers pay the whole budget: a stock-architecture cut
        base = SharedBase(model) if needs_base else None
        with timer.stage("cut"):
            report.cut = stages.cut(model, whole, log=log)
        heal_and_evaluate(model, tokenizer, base, recipe, report, timer, log)
        return save(model, tokenizer, recipe, source, report, timer, base=base)
    report.granularity = "mixed"
    distributed.on_main(finish_sublayer, model, tokenizer, model if needs_base else None, sorted(whole + attention),
                        whole, recipe, source, report, timer, log)


def finish_sublayer(model, tokenizer, base, removed_attention: list[int], removed_mlp: list[int], recipe: Recipe,
                    source: Source, report: Report, timer: Timer, log: Log, heal=None) -> None:
    """Attention-only / MLP-only removal (a layer in both lists goes whole): exported as a DeciLM (Nemotron-NAS)
    checkpoint; evaluated unhealed as a view on the loaded weights (sublayer.decilm_view: no second copy), or
    healed on a copy read back from the export."""
    from hf_layerprune.flow import stages
    from hf_layerprune.surgery.sublayer import decilm_view  # torch and the DeciLM classes: not on the light routes

    num_layers = model.config.num_hidden_layers
    with staging_dir(recipe.output_dir, recipe.overwrite, source_paths(source)) as tmp:
        with timer.stage("cut"):
            report.cut = stages.export_sublayers(model, tokenizer, removed_attention, removed_mlp, tmp, recipe, log=log)
        whole = report.cut.removed_layers
        if recipe.heal == "none" and recipe.evaluate:  # evaluated as is: a view on the loaded weights, no second copy
            pruned = decilm_view(model, removed_attention, removed_mlp)[0]
        elif recipe.heal != "none":  # trained: its own copy, read back with our DeciLM classes (not the folder's)
            pruned = load_checkpoint(tmp)
        del model
        if recipe.heal != "none" or recipe.evaluate:
            report.cut.parameters_after = stages.count_parameters(pruned)
            heal_and_evaluate(pruned, tokenizer, base, recipe, report, timer, log, heal)
            if recipe.heal != "none":
                with timer.stage("save"):
                    pruned.save_pretrained(tmp, max_shard_size=recipe.max_shard_size)
        else:
            report.cut.parameters_after = checkpoint_parameters(tmp)
        if wants_gguf(recipe):  # llama.cpp's deci architecture, from the folder just written
            with timer.stage("save"):
                report.gguf = GgufSection.from_dict(write_deci_gguf(tmp, recipe, source, num_layers - len(whole),
                                                                    card=card_fields(report, recipe), log=log))
            gguf_speed(report, recipe, source, tmp, base, timer, log)
        write_outputs(tmp, report, recipe, timer)
