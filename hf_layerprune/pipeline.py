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

from hf_layerprune import distributed
from hf_layerprune.checkpoint import check_weights, load_checkpoint
from hf_layerprune.checks import (check_4bit_source, check_recipe, check_source_layers, check_target_against, light_config,
                                  preflight, source_paths)
from hf_layerprune.errors import LayerPruneError
from hf_layerprune.gguf_route import card_fields, check_sublayer_gguf, resolve_format, wants_gguf, write_deci_gguf
from hf_layerprune.loading import Source, hub_files, local_checkpoint, resolve_source, resolved_revision
from hf_layerprune.finish import Timer, write_outputs
from hf_layerprune.memory import summary as memory_summary
from hf_layerprune.outputs import check_output_dir, staging_dir
from hf_layerprune.recipe import Recipe
from hf_layerprune.report import (
    CutSection, ExportSection, GgufSection, PreflightSection, Report, RoundRecord, SourceSection,
)
from hf_layerprune.targets import uses_metric
from hf_layerprune.streaming import checkpoint_parameters, run_gguf_surgery, run_streaming, streamed_selection
from hf_layerprune.surgery import kept_layers, remove_layers, side_files

# `stages` (and through it torch, transformers, the healers and the evaluation) is imported by the routes that load
# the model: the on-disk routes (streaming.py) start cutting without them.

Log = Callable[[str], None]


def _needs_gguf_model(recipe: Recipe) -> bool:
    """A GGUF source is dequantized only for scoring, healing or evaluation; a plain cut copies its blocks."""
    return recipe.granularity != "block" or recipe.heal != "none" or recipe.evaluate or uses_metric(recipe)


def needs_model_in_memory(recipe: Recipe, source: Source) -> bool:
    if recipe.format in ("gguf", "both"):  # GGUF export needs the model; a GGUF source is cut in memory too
        return True
    if source.kind == "gguf" or recipe.granularity != "block" or recipe.heal != "none" or recipe.evaluate:
        return True
    if recipe.layers or recipe.offload:
        return False
    return uses_metric(recipe)


def run(recipe: Recipe, *, command: str | None = None, log: Log = print) -> Report:
    """Check everything, then run the recipe's route; the returned Report is what `layerprune.json` holds."""
    check_recipe(recipe)
    distributed.check_recipe(recipe, _trains(recipe.heal))
    if not recipe.output_dir:
        raise LayerPruneError("give --output-dir DIR for the pruned model")
    source = resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle, check_files=False)
    gguf_cut = resolve_format(recipe, source) == "gguf" and source.kind == "gguf" and not _needs_gguf_model(recipe)
    in_memory = not gguf_cut and needs_model_in_memory(recipe, source)

    def checks() -> str | None:  # rank 0 alone in a multi-process launch; the others wait for the outcome
        check_output_dir(recipe.output_dir, recipe.overwrite, source_paths(source))
        config = None
        if source.kind != "hub" and not gguf_cut:  # Hub configs are read after the snapshot download, locally
            config = light_config(source, trust_remote_code=recipe.trust_remote_code)
            check_target_against(recipe, config.num_hidden_layers)
            check_sublayer_gguf(recipe, config)
        files = None
        if source.kind == "hub":  # gated, missing, Meta-format: said before anything is downloaded
            files = hub_files(source)
            if in_memory and distributed.is_distributed():  # one download; the other ranks read the Hub cache
                local_checkpoint(source, allow_pickle=recipe.allow_pickle)
        check_4bit_source(recipe, source, files)
        if source.kind == "dir" and any(source.path.glob("*.safetensors")):
            check_weights(source.path)  # every shard whole, before the first stage reads one
            if config is not None:
                check_source_layers(source, config)  # and holding exactly the config's layers
        if source.kind == "dir":
            side_files(source.path)  # no side file is a link out of the folder (refused before any work)
        return resolved_revision(source) if source.kind == "hub" else source.revision

    base_revision = distributed.on_main(checks, share=True)
    if source.kind == "hub":
        distributed.hub_cache_only()  # ranks > 0: no Hub request from here on
    timer = Timer()
    report = Report(SourceSection(base_model=source.name, base_revision=base_revision), command=command,
                    granularity=recipe.granularity, **distributed.world_record())
    if not in_memory and distributed.is_distributed():  # nothing to split: rank 0 cuts on disk, the others wait
        log("Several processes, no stage to split (the cut streams on disk): rank 0 does it alone")
    if gguf_cut:  # any llama.cpp architecture: transformers never reads this file
        distributed.on_main(run_gguf_surgery, recipe, source, report, timer, log)
    elif in_memory:
        run_in_memory(recipe, source, report, timer, log)
    else:
        distributed.on_main(run_streaming, recipe, source, report, timer, log,
                            in_memory=lambda src: run_in_memory(recipe, src, report, timer, log))
    if report.memory:
        log(memory_summary(report.memory.to_dict()))
    return report


def _trains(heal: str | None) -> bool:
    if heal in (None, "none"):
        return False
    from hf_layerprune.healing import trains

    return trains(heal)


def load(recipe: Recipe, source: Source, report: Report, timer: Timer, log: Log):
    """The load stage with its pre-flight memory check, timed: (model, tokenizer); fills the report's source."""
    from hf_layerprune import stages

    if not recipe.device_map:  # before loading: refuse a recipe that will not fit, naming what would
        estimate = preflight(recipe, source, log)
        report.preflight = PreflightSection.from_dict(estimate) if estimate is not None else None
    with timer.stage("load"):
        model, tokenizer, section = stages.load(recipe, source, log=log)
    report.source = dataclasses.replace(section, base_revision=report.source.base_revision)
    timer.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return model, tokenizer


def run_in_memory(recipe: Recipe, source: Source, report: Report, timer: Timer, log: Log) -> None:
    from hf_layerprune import stages
    from hf_layerprune.base_view import SharedBase

    streamed = None
    if recipe.offload and stages.uses_metric(recipe):  # score before the model is loaded, one layer at a time
        with timer.stage("score"):
            streamed = streamed_selection(local_checkpoint(source, allow_pickle=recipe.allow_pickle), recipe, log)
    model, tokenizer = load(recipe, source, report, timer, log)
    base = None
    if recipe.evaluate or recipe.heal != "none":
        # one copy of the weights: the base is a view over the pruned model (kept layers shared, removed layers held
        # aside, changed modules copied on write); the sub-layer route reloads the pruned model, the base is `model`
        base = SharedBase(model) if recipe.granularity == "block" else model
    if recipe.rounds > 1 and stages.uses_metric(recipe) and recipe.granularity == "block" and streamed is None:
        return run_rounds(model, tokenizer, base, recipe, source, report, timer, log)
    with timer.stage("score"):
        removed, report.scoring = streamed or stages.select(model, tokenizer, recipe, log=log)
    if recipe.granularity != "block":
        return distributed.on_main(finish_sublayer, model, tokenizer, base, removed, recipe, source, report, timer, log)
    with timer.stage("cut"):
        report.cut = stages.cut(model, removed, log=log)
    heal_and_evaluate(model, tokenizer, base, recipe, report, timer, log)
    save(model, tokenizer, recipe, source, report, timer)


def heal_and_evaluate(model, tokenizer, base, recipe: Recipe, report: Report, timer: Timer, log: Log) -> None:
    from hf_layerprune import stages

    if recipe.heal != "none":
        with timer.stage("heal"):
            report.healing, report.cut = stages.heal(model, tokenizer, recipe, report.cut, base=base, log=log)
    if recipe.evaluate:
        with timer.stage("evaluate"):
            report.evaluation = distributed.on_main(stages.evaluate, base, model, tokenizer, recipe, log=log)


def save(model, tokenizer, recipe: Recipe, source: Source, report: Report, timer: Timer) -> Path:
    """One writer: rank 0 saves in a multi-process launch (the healed weights are whole on every rank)."""
    return distributed.on_main(_save_here, model, tokenizer, recipe, source, report, timer) or Path(recipe.output_dir)


def _save_here(model, tokenizer, recipe: Recipe, source: Source, report: Report, timer: Timer) -> Path:
    """The save stage into a staging folder, then layerprune.json and the card; moved into place at the end."""
    from hf_layerprune import stages

    with staging_dir(recipe.output_dir, recipe.overwrite, source_paths(source)) as tmp:
        with timer.stage("save"):
            card = card_fields(report, recipe) if wants_gguf(recipe) else None
            report.gguf = stages.save(model, tokenizer, recipe, tmp, source=source, removed=report.cut.removed_layers,
                                      card=card)
        write_outputs(tmp, report, recipe, timer)
    return Path(recipe.output_dir)


def round_sizes(total: int, rounds: int) -> list[int]:
    """Split `total` removals over `rounds` (earlier rounds take the remainder): 8 over 3 -> [3, 3, 2]."""
    rounds = max(1, min(rounds, total))
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


def run_rounds(model, tokenizer, base, recipe: Recipe, source: Source, report: Report, timer: Timer, log: Log) -> None:
    """Iterative prune -> heal -> rescore: each round scores the current (healed) model and removes its share."""
    from hf_layerprune import stages

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
            remove_layers(model, removed_now)
        cut = CutSection(num_layers_after=model.config.num_hidden_layers,
                         removed_layers=sorted(cut.removed_layers + removed_original),
                         kept_layers=[i for j, i in enumerate(cut.kept_layers) if j not in set(removed_now)],
                         parameters_after=stages.count_parameters(model))
        entry = RoundRecord(round=k, removed_layers=sorted(removed_original), scoring=scoring)
        if recipe.heal != "none":
            with timer.stage("heal"):
                entry.healing, cut = stages.heal(model, tokenizer, step, cut, base=base, log=log)
        rounds.append(entry)
    report.rounds, report.scoring = rounds, rounds[-1].scoring
    report.cut = dataclasses.replace(cut, num_layers_after=model.config.num_hidden_layers,
                                     parameters_after=stages.count_parameters(model))
    if recipe.heal != "none":
        report.healing = rounds[-1].healing
    if recipe.evaluate:
        with timer.stage("evaluate"):
            report.evaluation = distributed.on_main(stages.evaluate, base, model, tokenizer, recipe, log=log)
    save(model, tokenizer, recipe, source, report, timer)


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


def finish_sublayer(model, tokenizer, base, removed, recipe: Recipe, source: Source, report: Report,
                    timer: Timer, log: Log) -> None:
    """Attention-only / MLP-only removal: exported as a DeciLM (Nemotron-NAS) checkpoint, healed after reload."""
    from hf_layerprune import stages

    from hf_layerprune.sublayer import export_decilm  # the DeciLM export (deferred with its modelling code)

    removed_attention = removed if recipe.granularity == "attention" else []
    removed_mlp = removed if recipe.granularity == "mlp" else []
    num_layers = model.config.num_hidden_layers
    with staging_dir(recipe.output_dir, recipe.overwrite, source_paths(source)) as tmp:
        with timer.stage("cut"):
            log(f"Removing {recipe.granularity} sub-layers {removed} of {num_layers} (DeciLM / Nemotron-NAS export)")
            summary = export_decilm(model, removed_attention, removed_mlp, tmp, max_shard_size=recipe.max_shard_size,
                                    overwrite=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        whole = summary["removed_layers"]
        export = ExportSection(format="decilm", architecture="DeciLMForCausalLM", trust_remote_code=True,
                               block_configs=summary["block_configs"],
                               kv_cache_bytes_per_token=summary["kv_cache_bytes_per_token"])
        report.cut = CutSection(
            num_layers_after=num_layers - len(whole), removed_layers=whole, kept_layers=kept_layers(whole, num_layers),
            removed_sublayers={"attention": summary["removed_attention"], "mlp": summary["removed_mlp"]}, export=export)
        del model
        if recipe.heal != "none" or recipe.evaluate:
            pruned = load_checkpoint(tmp)  # our DeciLM classes from the package, never the folder's copy
            report.cut.parameters_after = stages.count_parameters(pruned)
            heal_and_evaluate(pruned, tokenizer, base, recipe, report, timer, log)
            if recipe.heal != "none":
                with timer.stage("save"):
                    pruned.save_pretrained(tmp, max_shard_size=recipe.max_shard_size)
        else:
            report.cut.parameters_after = checkpoint_parameters(tmp)
        if wants_gguf(recipe):  # llama.cpp's deci architecture, from the folder just written
            with timer.stage("save"):
                report.gguf = GgufSection.from_dict(write_deci_gguf(tmp, recipe, source, num_layers - len(whole),
                                                                    card=card_fields(report, recipe), log=log))
        write_outputs(tmp, report, recipe, timer)
