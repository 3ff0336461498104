"""The streaming routes: cuts that never load the model. Explicit `--layers`, a config-only rule (`last`) or a
metric scored one layer at a time (`--offload`, scoring/streamed.py) choose the layers; the safetensors shards are
rewritten on disk (surgery.prune_checkpoint), byte-identical to the in-memory route's output (tests/test_surgery.py).
A GGUF source is cut block by block (`run_gguf_surgery`, gguf_surgery.py), its quantized blocks copied as they are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from hf_layerprune.architectures import get_architecture
from hf_layerprune.flow.checks import source_paths
from hf_layerprune.runtime.errors import CheckpointError, ConfigError
from hf_layerprune.flow.finish import write_outputs
from hf_layerprune.flow.gguf_route import card_fields, elements, output_name, source_file
from hf_layerprune.surgery.gguf_surgery import kept_blocks, prune_gguf, read_header, renamed
from hf_layerprune.hub import local_checkpoint
from hf_layerprune.surgery.loading import Source, torch_dtype
from hf_layerprune.runtime.outputs import staging_dir
from hf_layerprune.report.provenance import hashed_alongside
from hf_layerprune.recipe import AUTO, Recipe
from hf_layerprune.report import CutSection, GgufSection, Report, ScoringSection
from hf_layerprune.flow.targets import explicit_or_rule, uses_metric
from hf_layerprune.surgery.layers import checkpoint_files, prune_checkpoint, read_config, read_safetensors_header

# torch, transformers and the scoring stack are imported by `streamed_selection` alone: a cut by --layers or a
# config rule starts at once (tests/test_light_route.py runs it with both unimportable).

Log = Callable[[str], None]


def checkpoint_parameters(directory: Path) -> int:
    total = 0
    for path in checkpoint_files(Path(directory)):
        header, _ = read_safetensors_header(path)
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def streamed_selection(checkpoint: Path, recipe: Recipe, log: Log) -> tuple[list[int], ScoringSection]:
    """--offload: score with one layer in memory at a time (scoring/streamed.py) on a text calibration set."""
    import torch
    from transformers import AutoTokenizer

    from hf_layerprune.runtime.calibration import calibration_batches, calibration_record
    from hf_layerprune.surgery.layer_stream import StreamedModel
    from hf_layerprune.scoring import get_metric, run_metric
    from hf_layerprune.scoring.run import default_batch_size
    from hf_layerprune.scoring.streamed import StreamedScoringContext, check_streamable

    if recipe.metric_name == AUTO:
        raise ConfigError("--offload scores one layer at a time, which --metric auto cannot (it heals candidate "
                              "copies of the whole model); give --metric angular, bi, cosine, shapley or ppl")
    metric = get_metric(recipe.metric_name)
    check_streamable(metric.name)
    if recipe.granularity != "block":
        raise ConfigError("--offload scores whole layers only; drop --offload for --granularity attention|mlp")
    if recipe.calibration == "self":
        raise ConfigError("--offload cannot sample `self` calibration text (that needs the whole model); "
                              "give --calibration a dataset or text files")
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except Exception:
        raise CheckpointError(f"--offload with text calibration needs the tokenizer files in {checkpoint}") from None
    cal = dict(samples=recipe.calibration_samples, seq_len=recipe.seq_len, seed=recipe.seed, text_column=recipe.text_column)
    batches = calibration_batches(recipe.calibration, tokenizer, **cal)
    dtype = None if recipe.dtype in (None, "auto") else torch_dtype(recipe.dtype)
    streamed = StreamedModel(checkpoint, device=recipe.device or ("cuda" if torch.cuda.is_available() else "cpu"), dtype=dtype)
    ctx = StreamedScoringContext(streamed, batches, batch_size=default_batch_size(recipe.seq_len), seed=recipe.seed, log=log)
    log(f"Scoring {streamed.num_layers} layers with {metric.name}, one layer in memory at a time")
    record = run_metric(metric, ctx, drop=recipe.drop, selection=recipe.selection, protect=recipe.protect)
    record["calibration"] = calibration_record(recipe.calibration, tokenizer, batches=batches, **cal)
    record["offload"] = True
    return record["selected"], ScoringSection.from_dict(record)


def run_streaming(recipe: Recipe, source: Source, report: Report, timer, log: Log, *, in_memory: Callable) -> None:
    """Cut on disk; `in_memory(source)` takes over for pickle weights (allowed by the user), which are cut in memory."""
    with timer.stage("load"):
        src = local_checkpoint(source, allow_pickle=recipe.allow_pickle)
        if not any(src.glob("*.safetensors")):
            return in_memory(Source("dir", source.name, src, None, source.revision))
        config = read_config(src)
    get_architecture(config)
    num_layers = config.num_hidden_layers
    if uses_metric(recipe):
        with timer.stage("score"):
            removed, report.scoring = streamed_selection(src, recipe, log)
    else:
        removed = explicit_or_rule(recipe, num_layers)
    report.source.model_type = config.model_type
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)  # config.json may say either
    report.source.dtype = str(dtype or "auto").replace("torch.", "")
    report.source.parameters_before = checkpoint_parameters(src)
    timer.weight_bytes = sum(path.stat().st_size for path in checkpoint_files(src))
    log(f"Streaming {source.name}: removing layers {removed} of {num_layers} on disk")
    with staging_dir(recipe.output_dir, recipe.overwrite, source_paths(source)) as tmp:
        local = checkpoint_files(src) if source.kind == "dir" else []  # a Hub source's provenance is its commit
        with timer.stage("cut"), hashed_alongside(local):  # the provenance hash, while the cut reads the shards
            info = prune_checkpoint(src, tmp, removed, max_shard_size=recipe.max_shard_size)
        report.source.num_layers_before = num_layers
        report.cut = CutSection(num_layers_after=len(info["kept_layers"]), removed_layers=info["removed_layers"],
                                kept_layers=info["kept_layers"], parameters_after=checkpoint_parameters(tmp),
                                route="streaming")
        write_outputs(tmp, report, recipe, timer)


def run_gguf_surgery(recipe: Recipe, source: Source, report: Report, timer, log: Log) -> None:
    """GGUF -> GGUF without loading the model: explicit --layers or a config rule, nothing else."""
    with timer.stage("load"):
        header = read_header(source_file(source))
        arch, num_layers = header.architecture, header.block_count
        total = sum(elements(t) for t in header.tensors)
        header.buf.close()
    removed = explicit_or_rule(recipe, num_layers)
    log(f"Cutting {source.gguf_file}: removing layers {removed} of {num_layers}, quantized blocks copied as they are")
    report.source.model_type, report.source.num_layers_before, report.source.parameters_before = arch, num_layers, total
    report.cut = CutSection(num_layers_after=num_layers - len(removed), removed_layers=sorted(removed),
                            kept_layers=kept_blocks(removed, num_layers), route="gguf")
    with staging_dir(recipe.output_dir, recipe.overwrite, [source_file(source)]) as tmp:
        with timer.stage("cut"), hashed_alongside([source_file(source)]):
            path = tmp / output_name(source, num_layers - len(removed))
            info = prune_gguf(source_file(source), path, removed, card=card_fields(report, recipe))
            info.pop("replaced_tensors")
        new_index = {old: new for new, old in enumerate(info["kept_layers"])}
        report.cut.parameters_after = sum(elements(t) for t in header.tensors if renamed(t.name, new_index) is not None)
        report.gguf = GgufSection.from_dict({"route": "surgery", **info, "requantized": {}})
        write_outputs(tmp, report, recipe, timer)
