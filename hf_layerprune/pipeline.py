"""run(recipe) -> report: load, score, select, cut, heal, evaluate, save, card — one stage after another.

Two routes give byte-identical weights (tests/test_surgery.py):
- streaming: when no stage needs the model in memory (explicit --layers or a config-only rule such as
  `last`, `--heal none`, no evaluation), the safetensors shards are rewritten on disk without loading it;
- in memory: the model is loaded once, scored, cut with `surgery.remove_layers`, healed, evaluated and saved
  with `save_pretrained`.
Everything is written to a temporary directory that replaces `recipe.output_dir` only at the end.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from hf_layerprune import __version__, distributed, progress
from hf_layerprune.base_view import SharedBase
from hf_layerprune.checkpoint import check_weights
from hf_layerprune.errors import ConfigError, LayerPruneError
from hf_layerprune.loading import Source, hub_files, load_model, local_checkpoint, resolve_source, resolved_revision, torch_dtype
from hf_layerprune.memory import MemoryMeter, summary as memory_summary
from hf_layerprune.outputs import check_output_dir, staging_dir
from hf_layerprune.recipe import Recipe
from hf_layerprune.report import FORMAT_VERSION, library_versions, write_report
from hf_layerprune.surgery import (
    checkpoint_files,
    copy_side_files,
    kept_layers,
    prune_checkpoint,
    read_safetensors_header,
    remove_layers,
    validate_removed,
)

Log = Callable[[str], None]


class Timer:
    """Seconds and peak memory (memory.MemoryMeter) per stage; `weight_bytes` is what the peak is compared with."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.memory = MemoryMeter()
        self.weight_bytes: int | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with progress.stage(name), self.memory.stage(name):  # progress: shown live by the CLI's display
                yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def config_rule_layers(rule: str, num_layers: int, n: int) -> list[int]:
    """Selections that need only the depth: Gromov's `last` (deepest before the final layer), `reverse`."""
    if rule == "last":
        return list(range(num_layers - 1 - n, num_layers - 1))
    if rule == "reverse":
        return list(range(num_layers - n, num_layers))
    raise LayerPruneError(f"{rule!r} is not a config-only rule")


CONFIG_RULES = ("last", "reverse")


def _needs_gguf_model(recipe: Recipe) -> bool:
    """A GGUF source is dequantized only for scoring, healing or evaluation; a plain cut copies its blocks."""
    return recipe.granularity != "block" or recipe.heal != "none" or recipe.evaluate or _uses_metric(recipe)


def needs_model_in_memory(recipe: Recipe, source: Source) -> bool:
    if recipe.format in ("gguf", "both"):  # GGUF export needs the model; a GGUF source is cut in memory too
        return True
    if source.kind == "gguf" or recipe.granularity != "block" or recipe.heal != "none" or recipe.evaluate:
        return True
    if recipe.layers or recipe.offload:
        return False
    return metric_for(recipe) not in CONFIG_RULES


def source_config(source: Source, token: str | None = None, trust_remote_code: bool = False):
    """The source's config alone (no weights): checked before any heavy work."""
    from transformers import AutoConfig

    from hf_layerprune.architectures import get_architecture

    kwargs = {"gguf_file": source.gguf_file} if source.kind == "gguf" else {}
    try:
        config = AutoConfig.from_pretrained(source.pretrained_id, revision=source.revision, token=token,
                                            trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        from hf_layerprune.checkpoint import loading_error

        raise loading_error(exc, f"could not read the config of {source.name}", source.name, trust_remote_code) from None
    get_architecture(config)  # unknown families fail here
    return config


def check_target_against(recipe: Recipe, num_layers: int) -> None:
    from hf_layerprune.selection import parse_protect

    if recipe.protect and recipe.granularity == "block":
        parse_protect(recipe.protect, num_layers)
    if recipe.layers:
        validate_removed(recipe.layers, num_layers)
    elif recipe.granularity == "block" and recipe.drop >= num_layers:
        raise LayerPruneError(f"--drop {recipe.drop} must be smaller than the number of layers ({num_layers})")
    elif recipe.drop > num_layers:
        raise LayerPruneError(f"--drop {recipe.drop} is more than the {num_layers} {recipe.granularity} sub-layers")


def planned_num_layers(recipe: Recipe, token: str | None = None) -> int:
    """Depth of the output, known before any work (for the default repo name): from the source config alone."""
    source = resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle)
    if source.kind == "hub":
        hub_files(source, token)
    config = source_config(source, token)
    check_target_against(recipe, config.num_hidden_layers)
    if recipe.granularity != "block":
        return config.num_hidden_layers
    return config.num_hidden_layers - (len(recipe.layers) if recipe.layers else recipe.drop)


def metric_for(recipe: Recipe) -> str:
    """`scoring.metric_for`, imported when first needed, as the pipeline imports every stage."""
    from hf_layerprune.scoring import metric_for as scoring_metric_for

    return scoring_metric_for(recipe)


def check_recipe(recipe: Recipe) -> None:
    """Every option of every stage, checked before the network and before any weight is read: the target, the
    metric and its options, the selection, the heal chain and its options, the dtype and device, the tasks."""
    from hf_layerprune.healing import check_heal
    from hf_layerprune.loading import check_device
    from hf_layerprune.selection import check_strategy

    recipe.validate_target()
    recipe.resolve_defaults()
    if _uses_metric(recipe):
        from hf_layerprune.scoring import AUTO, get_metric

        if metric_for(recipe) != AUTO:
            get_metric(metric_for(recipe)).check_granularity(recipe.granularity)
    if recipe.selection is not None:
        check_strategy(recipe.selection)
    check_heal(recipe.heal)
    torch_dtype(recipe.dtype)
    check_device(recipe.device)
    check_shard_size(recipe.max_shard_size)
    if recipe.evaluate:  # unknown tasks fail now, not after cutting and healing
        from hf_layerprune.evaluation import check_tasks, settings_from_recipe

        check_tasks(settings_from_recipe(recipe))


def check_shard_size(text: str) -> None:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        if convert_file_size_to_int(text) < 1:
            raise ValueError
    except (ValueError, TypeError):
        raise ConfigError(f"cannot read --max-shard-size {text!r}: give a size like 5GB or 500MB") from None


def source_paths(source: Source) -> list[Path]:
    """Local paths an output must not overlap: the model folder or GGUF file, and the Hub cache for Hub ids."""
    if source.kind == "gguf":
        return [source.path / source.gguf_file]
    if source.kind == "dir":
        return [source.path]
    from huggingface_hub import constants

    return [Path(constants.HF_HUB_CACHE)]


def run(recipe: Recipe, *, command: str | None = None, log: Log = print) -> dict[str, Any]:
    check_recipe(recipe)
    distributed.check_recipe(recipe)
    if not recipe.output_dir:
        raise LayerPruneError("give --output-dir DIR for the pruned model")
    source = resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle, check_files=False)
    from hf_layerprune.gguf_route import resolve_format

    gguf_cut = resolve_format(recipe, source) == "gguf" and source.kind == "gguf" and not _needs_gguf_model(recipe)
    in_memory = not gguf_cut and needs_model_in_memory(recipe, source)

    def checks() -> str | None:  # rank 0 alone in a multi-process launch; the others wait for the outcome
        check_output_dir(recipe.output_dir, recipe.overwrite, source_paths(source))
        if source.kind != "hub" and not gguf_cut:  # Hub configs are read after the snapshot download, locally
            check_target_against(recipe, source_config(source, trust_remote_code=recipe.trust_remote_code).num_hidden_layers)
        if source.kind == "hub":  # gated, missing, Meta-format: said before anything is downloaded
            hub_files(source)
            if in_memory and distributed.is_distributed():  # one download; the other ranks read the Hub cache
                local_checkpoint(source, allow_pickle=recipe.allow_pickle)
        if source.kind == "dir" and any(source.path.glob("*.safetensors")):
            check_weights(source.path)  # every shard whole, before the first stage reads one
        return resolved_revision(source) if source.kind == "hub" else source.revision

    base_revision = distributed.on_main(checks, share=True)
    if source.kind == "hub":
        distributed.hub_cache_only()  # ranks > 0: no Hub request from here on
    timer = Timer()
    report: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "tool": {"name": "hf-layerprune", "version": __version__},
        "command": command,
        "base_model": source.name,
        "base_revision": base_revision,
        "granularity": recipe.granularity,
        **distributed.world_record(),
    }
    if not in_memory and distributed.is_distributed():  # nothing to split: rank 0 cuts on disk, the others wait
        log("Several processes, no stage to split (the cut streams on disk): rank 0 does it alone")
    if gguf_cut:  # any llama.cpp architecture: transformers never reads this file
        from hf_layerprune.gguf_route import run_streaming

        distributed.on_main(run_streaming, recipe, source, report, timer, log, _explicit_or_rule)
    elif in_memory:
        _run_in_memory(recipe, source, report, timer, log)
    else:
        distributed.on_main(_run_streaming, recipe, source, report, timer, log)
    if report.get("memory"):
        log(memory_summary(report["memory"]))
    return report


def _finish_report(report: dict[str, Any], recipe: Recipe, timer: Timer) -> None:
    report["recipe"] = recipe.to_dict()
    report["versions"] = library_versions()
    report["timings"] = timer.timings
    report["memory"] = timer.memory.record(timer.weight_bytes)


def _run_streaming(recipe: Recipe, source: Source, report: dict, timer: Timer, log: Log) -> None:
    from transformers import AutoConfig

    with timer.stage("load"):
        src = local_checkpoint(source, allow_pickle=recipe.allow_pickle)
        if not any(src.glob("*.safetensors")):  # pickle weights (allowed by the user) are cut in memory
            return _run_in_memory(recipe, Source("dir", source.name, src, None, source.revision), report, timer, log)
        config = AutoConfig.from_pretrained(src)
    from hf_layerprune.architectures import get_architecture

    get_architecture(config)
    num_layers = config.num_hidden_layers
    if _uses_metric(recipe):
        with timer.stage("score"):
            removed, report["scoring"] = streamed_selection(src, recipe, log)
    else:
        removed = _explicit_or_rule(recipe, num_layers)
    report.update(model_type=config.model_type, dtype=str(getattr(config, "dtype", None) or "auto").replace("torch.", ""))
    report["parameters_before"] = _checkpoint_parameters(src)
    timer.weight_bytes = sum(path.stat().st_size for path in checkpoint_files(src))
    log(f"Streaming {source.name}: removing layers {removed} of {num_layers} on disk")
    with staging_dir(recipe.output_dir, recipe.overwrite, source_paths(source)) as tmp:
        with timer.stage("cut"):
            info = prune_checkpoint(src, tmp, removed, max_shard_size=recipe.max_shard_size)
        report.update(
            num_layers_before=num_layers,
            num_layers_after=len(info["kept_layers"]),
            removed_layers=info["removed_layers"],
            kept_layers=info["kept_layers"],
            parameters_after=_checkpoint_parameters(tmp),
            route="streaming",
        )
        _write_outputs(tmp, report, recipe, timer)


def streamed_selection(checkpoint: Path, recipe: Recipe, log: Log) -> tuple[list[int], dict]:
    """--offload: score with one layer in memory at a time (scoring/streamed.py) on a text calibration set."""
    import torch
    from transformers import AutoTokenizer

    from hf_layerprune.calibration import calibration_batches, calibration_record
    from hf_layerprune.layer_stream import StreamedModel
    from hf_layerprune.scoring import AUTO, get_metric, run_metric
    from hf_layerprune.scoring.run import default_batch_size
    from hf_layerprune.scoring.streamed import StreamedScoringContext, check_streamable

    if metric_for(recipe) == AUTO:
        raise LayerPruneError("--offload scores one layer at a time, which --metric auto cannot (it heals candidate "
                              "copies of the whole model); give --metric angular, bi, cosine, shapley or ppl")
    metric = get_metric(metric_for(recipe))
    check_streamable(metric.name)
    if recipe.granularity != "block":
        raise LayerPruneError("--offload scores whole layers only; drop --offload for --granularity attention|mlp")
    if recipe.calibration == "self":
        raise LayerPruneError("--offload cannot sample `self` calibration text (that needs the whole model); "
                              "give --calibration a dataset or text files")
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except Exception:
        raise LayerPruneError(f"--offload with text calibration needs the tokenizer files in {checkpoint}") from None
    cal = dict(samples=recipe.calibration_samples, seq_len=recipe.seq_len, seed=recipe.seed, text_column=recipe.text_column)
    batches = calibration_batches(recipe.calibration, tokenizer, **cal)
    dtype = None if recipe.dtype in (None, "auto") else torch_dtype(recipe.dtype)
    streamed = StreamedModel(checkpoint, device=recipe.device or ("cuda" if torch.cuda.is_available() else "cpu"), dtype=dtype)
    ctx = StreamedScoringContext(streamed, batches, batch_size=default_batch_size(recipe.seq_len), seed=recipe.seed, log=log)
    log(f"Scoring {streamed.num_layers} layers with {metric.name}, one layer in memory at a time")
    record = run_metric(metric, ctx, drop=recipe.drop, selection=recipe.selection, protect=recipe.protect)
    record["calibration"] = calibration_record(recipe.calibration, tokenizer, batches=batches, **cal)
    record["offload"] = True
    return record["selected"], record


def _explicit_or_rule(recipe: Recipe, num_layers: int) -> list[int]:
    if recipe.layers:
        return validate_removed(recipe.layers, num_layers)
    if recipe.drop >= num_layers:
        raise LayerPruneError(f"--drop {recipe.drop} must be smaller than the number of layers ({num_layers})")
    return validate_removed(config_rule_layers(metric_for(recipe), num_layers, recipe.drop), num_layers)


def _checkpoint_parameters(directory: Path) -> int:
    import math

    total = 0
    for path in checkpoint_files(Path(directory)):
        header, _ = read_safetensors_header(path)
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_for_memory(recipe: Recipe, source: Source, report: dict, timer: Timer, log: Log):
    # `self` calibration samples token ids from the model, so scoring alone needs no tokenizer (tiny checkpoints)
    scoring_text = bool(recipe.drop and metric_for(recipe) not in CONFIG_RULES) and recipe.calibration != "self"
    needs_text = scoring_text or recipe.heal != "none" or recipe.evaluate
    if not recipe.device_map:  # before loading: refuse a recipe that will not fit, naming what would
        report["preflight"] = preflight(recipe, source, log)
    with timer.stage("load"):
        log(f"Loading {source.name}")
        model, tokenizer = load_model(
            source, dtype=recipe.dtype, device=recipe.device, allow_pickle=recipe.allow_pickle, need_tokenizer=needs_text,
            device_map=recipe.device_map, trust_remote_code=recipe.trust_remote_code,
        )
    if recipe.granularity != "block":
        from hf_layerprune.sublayer import check_sublayer_support

        check_sublayer_support(model.config.model_type)
    report.update(
        model_type=model.config.model_type,
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        num_layers_before=model.config.num_hidden_layers,
        parameters_before=count_parameters(model),
    )
    timer.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return model, tokenizer


def preflight(recipe: Recipe, source: Source, log: Log) -> dict[str, Any] | None:
    """memory.check_fits for the recipe on its device, from the source's config alone (no weights loaded)."""
    import torch

    from hf_layerprune.memory import GiB, check_fits, element_bytes, shape_of

    config = source_config(source, trust_remote_code=recipe.trust_remote_code)
    device = recipe.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded, stored = element_bytes(recipe, config, source.kind == "gguf")
    try:
        shape = shape_of(config, loaded)
    except Exception as exc:  # a config transformers cannot build on the meta device: no estimate, no refusal
        log(f"No memory estimate: {type(exc).__name__}")
        return None
    if source.kind == "gguf":  # dequantized from the file, which is read whole
        shape.load_extra = (source.path / source.gguf_file).stat().st_size
    elif stored and stored != loaded:  # converted from the checkpoint's dtype: its (mmapped) pages are touched too
        shape.load_extra = shape.parameters * stored
    record = check_fits(shape, recipe, device=device)
    log(f"Memory estimate: {record['estimate_bytes'] / GiB:.1f} GiB of {record['budget_bytes'] / GiB:.1f} GiB "
        f"({record['budget_from']})")
    return record


def _uses_metric(recipe: Recipe) -> bool:
    return not recipe.layers and metric_for(recipe) not in CONFIG_RULES


def _run_in_memory(recipe: Recipe, source: Source, report: dict, timer: Timer, log: Log) -> None:
    streamed = None
    if recipe.offload and _uses_metric(recipe):  # score before the model is loaded, one layer at a time
        with timer.stage("score"):
            streamed = streamed_selection(local_checkpoint(source, allow_pickle=recipe.allow_pickle), recipe, log)
    model, tokenizer = _load_for_memory(recipe, source, report, timer, log)
    num_layers = model.config.num_hidden_layers
    base_model = None
    if recipe.evaluate or recipe.heal != "none":
        # one copy of the weights: the base is a view over the pruned model (kept layers shared, removed layers held
        # aside, changed modules copied on write); the sub-layer route reloads the pruned model, the base is `model`
        base_model = SharedBase(model) if recipe.granularity == "block" else model
    if recipe.rounds > 1 and _uses_metric(recipe) and recipe.granularity == "block" and streamed is None:
        return _run_rounds(model, tokenizer, base_model, recipe, source, report, timer, log)
    with timer.stage("score"):
        if streamed is not None:
            removed, report["scoring"] = streamed
        elif _uses_metric(recipe):
            from hf_layerprune.scoring import select_for_recipe

            removed, report["scoring"] = select_for_recipe(model, tokenizer, recipe, log=log)
        else:
            removed = _explicit_or_rule(recipe, num_layers)
    if recipe.granularity != "block":
        return distributed.on_main(_finish_sublayer, model, tokenizer, base_model, removed, recipe, source, report, timer, log)
    _cut(model, removed, report, timer, log)
    _heal_and_evaluate(model, tokenizer, base_model, recipe, report, timer, log)
    _save(model, tokenizer, recipe, source, report, timer)


def _cut(model, removed: list[int], report: dict, timer: Timer, log: Log) -> None:
    num_layers = model.config.num_hidden_layers
    with timer.stage("cut"):
        log(f"Removing layers {removed} of {num_layers}")
        remove_layers(model, removed)
    report.update(
        num_layers_after=model.config.num_hidden_layers,
        removed_layers=removed,
        kept_layers=kept_layers(removed, num_layers),
        parameters_after=count_parameters(model),
        route="in-memory",
    )


def _save(model, tokenizer, recipe: Recipe, source: Source, report: dict, timer: Timer) -> Path:
    """One writer: rank 0 saves in a multi-process launch (the healed weights are whole on every rank)."""
    return distributed.on_main(_save_here, model, tokenizer, recipe, source, report, timer) or Path(recipe.output_dir)


def _save_here(model, tokenizer, recipe: Recipe, source: Source, report: dict, timer: Timer) -> Path:
    with staging_dir(recipe.output_dir, recipe.overwrite, source_paths(source)) as tmp:
        with timer.stage("save"):
            from hf_layerprune.gguf_route import wants_gguf, wants_safetensors, write_gguf

            if source.kind == "dir":
                copy_side_files(source.path, tmp)
            if wants_safetensors(recipe):
                model.save_pretrained(tmp, max_shard_size=recipe.max_shard_size)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if wants_gguf(recipe):
                report["gguf"] = write_gguf(model, tmp, recipe, source, report)
        _write_outputs(tmp, report, recipe, timer)
    return Path(recipe.output_dir)


def round_sizes(total: int, rounds: int) -> list[int]:
    """Split `total` removals over `rounds` (earlier rounds take the remainder): 8 over 3 -> [3, 3, 2]."""
    rounds = max(1, min(rounds, total))
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


def _run_rounds(model, tokenizer, base_model, recipe: Recipe, source: Source, report: dict, timer: Timer, log: Log) -> None:
    """Iterative prune -> heal -> rescore: each round scores the current (healed) model and removes its share."""
    import dataclasses

    from hf_layerprune.scoring import select_for_recipe

    original = list(range(model.config.num_hidden_layers))  # original index of each current layer
    removed_all: list[int] = []
    rounds = []
    for k, n in enumerate(round_sizes(recipe.drop, recipe.rounds), start=1):
        log(f"Round {k}: removing {n} more layers")
        step = dataclasses.replace(recipe, drop=n, protect=_protect_in_current(recipe.protect, original))
        with timer.stage("score"):
            removed_now, scoring = select_for_recipe(model, tokenizer, step, log=log)
        removed_original = [original[i] for i in removed_now]
        with timer.stage("cut"):
            remove_layers(model, removed_now)
        original = [i for j, i in enumerate(original) if j not in set(removed_now)]
        removed_all = sorted(removed_all + removed_original)
        entry = {"round": k, "removed_layers": sorted(removed_original), "scoring": scoring}
        if recipe.heal != "none":
            step_report = {**report, "removed_layers": removed_all, "kept_layers": original,
                           "num_layers_after": len(original)}
            with timer.stage("heal"):
                from hf_layerprune.healing import heal_for_recipe

                entry["healing"] = heal_for_recipe(model, tokenizer, step, step_report, base_model=base_model, log=log)
            original = step_report["kept_layers"]  # a replacement healer may keep a layer back
            removed_all = step_report["removed_layers"]
        rounds.append(entry)
    report.update(
        rounds=rounds,
        scoring=rounds[-1]["scoring"],
        num_layers_after=model.config.num_hidden_layers,
        removed_layers=removed_all,
        kept_layers=original,
        parameters_after=count_parameters(model),
        route="in-memory",
    )
    if recipe.heal != "none":
        report["healing"] = rounds[-1]["healing"]
    if recipe.evaluate:
        with timer.stage("evaluate"):
            from hf_layerprune.evaluation import evaluate_for_recipe

            report["evaluation"] = distributed.on_main(evaluate_for_recipe, base_model, model, tokenizer, recipe, log=log)
    _save(model, tokenizer, recipe, source, report, timer)


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


def _heal_and_evaluate(model, tokenizer, base_model, recipe: Recipe, report: dict, timer: Timer, log: Log) -> None:
    if recipe.heal != "none":
        with timer.stage("heal"):
            from hf_layerprune.healing import heal_for_recipe

            report["healing"] = heal_for_recipe(model, tokenizer, recipe, report, base_model=base_model, log=log)
    if recipe.evaluate:
        with timer.stage("evaluate"):
            from hf_layerprune.evaluation import evaluate_for_recipe

            report["evaluation"] = distributed.on_main(evaluate_for_recipe, base_model, model, tokenizer, recipe, log=log)


def _finish_sublayer(model, tokenizer, base_model, removed, recipe: Recipe, source: Source, report: dict,
                     timer: Timer, log: Log) -> None:
    """Attention-only / MLP-only removal: exported as a DeciLM (Nemotron-NAS) checkpoint, healed after reload."""
    from hf_layerprune.checkpoint import load_checkpoint
    from hf_layerprune.sublayer import export_decilm

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
        report.update(
            removed_sublayers={"attention": summary["removed_attention"], "mlp": summary["removed_mlp"]},
            removed_layers=whole,
            kept_layers=kept_layers(whole, num_layers),
            num_layers_after=num_layers - len(whole),
            export={
                "format": "decilm",
                "architecture": "DeciLMForCausalLM",
                "trust_remote_code": True,
                "block_configs": summary["block_configs"],
                "kv_cache_bytes_per_token": summary["kv_cache_bytes_per_token"],
            },
            route="in-memory",
        )
        del model
        if recipe.heal != "none" or recipe.evaluate:
            pruned = load_checkpoint(tmp)  # our DeciLM classes from the package, never the folder's copy
            report["parameters_after"] = count_parameters(pruned)
            _heal_and_evaluate(pruned, tokenizer, base_model, recipe, report, timer, log)
            if recipe.heal != "none":
                with timer.stage("save"):
                    pruned.save_pretrained(tmp, max_shard_size=recipe.max_shard_size)
        else:
            report["parameters_after"] = _checkpoint_parameters(tmp)
        _write_outputs(tmp, report, recipe, timer)


def _write_outputs(tmp: Path, report: dict, recipe: Recipe, timer: Timer) -> None:
    _finish_report(report, recipe, timer)
    write_report(tmp, report)
    try:
        from hf_layerprune.card import render_card
    except ImportError:
        return
    local_card = Path(recipe.model) / "README.md"  # a local base's licence, read here: the report keeps no path
    with progress.stage("card"):
        render_card(tmp, base_card=local_card if local_card.is_file() else None)
