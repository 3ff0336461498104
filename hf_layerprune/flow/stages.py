"""The public stages of a run. Each takes explicit inputs and returns its own section of the `Report`; none writes
another's. `pipeline.run`, `--rounds` and `sweep` are short compositions of them; a library caller can compose
them too (README, "Python API"):

    recipe = Recipe(model="HuggingFaceTB/SmolLM2-135M-Instruct", drop=6).resolve_defaults()
    model, tokenizer, source = load(recipe)
    base = SharedBase(model)                                   # the unpruned model, as a view (no copy)
    removed, scoring = select(model, tokenizer, recipe)
    cut_section = cut(model, removed)
    healing, cut_section = heal(model, tokenizer, recipe, cut_section, base=base)
    evaluation = evaluate(base, model, tokenizer, recipe)
    save(model, tokenizer, recipe, "out")
    card("out", Report(source, cut=cut_section, scoring=scoring, healing=healing, evaluation=evaluation,
                       recipe=RecipeSection.from_dict(recipe.to_dict())))

Calibration is drawn inside `select` (the scoring text) and `heal` (the healing text), each from the recipe, so
that a stage run alone draws exactly what it draws inside the pipeline.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from hf_layerprune.surgery import quantized
from hf_layerprune.flow.auto import auto_select
from hf_layerprune.surgery.base_view import SharedBase
from hf_layerprune.runtime.errors import OutputError
from hf_layerprune.evaluation import evaluate_for_recipe
from hf_layerprune.flow.finish import card  # noqa: F401  (a stage of the API; light, the on-disk routes use it)
from hf_layerprune.runtime.formats import formats_of
from hf_layerprune.healing import heal_for_recipe
from hf_layerprune.hub import publish_folder
from hf_layerprune.surgery.quantized import count_parameters  # packed 4-bit weights at their real shape
from hf_layerprune.hub import local_checkpoint
from hf_layerprune.surgery.loading import Source, load_model, resolve_source
from hf_layerprune.recipe import AUTO, Recipe
from hf_layerprune.report import CutSection, EvaluationSection, ExportSection, HealingSection, ScoringSection, SourceSection
from hf_layerprune.scoring import METRICS, select_for_recipe
from hf_layerprune.flow.targets import explicit_or_rule, uses_metric  # noqa: F401  (part of the stages' API)
from hf_layerprune.surgery.streamed_merge import write_merged
from hf_layerprune.surgery.layers import copy_side_files, kept_layers, remove_layers

Log = Callable[[str], None]

__all__ = ["SharedBase", "card", "cut", "evaluate", "export_sublayers", "heal", "load", "publish", "save", "select"]


def load(recipe: Recipe, source: Source | None = None, *, log: Log = print) -> tuple[Any, Any, SourceSection]:
    """The model and tokenizer the recipe names, and the report's source section (no copy is kept).

    A tokenizer is loaded only when a stage reads text: text calibration, healing or evaluation (`self`
    calibration samples token ids from the model, so scoring alone needs none)."""
    source = source or resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle)
    scoring_text = bool((recipe.drop or recipe.target) and not METRICS.has(recipe.metric_name, "config_only")) \
        and recipe.calibration != "self"
    needs_text = scoring_text or recipe.heal != "none" or recipe.evaluate
    log(f"Loading {source.name}")
    model, tokenizer = load_model(
        source, dtype=recipe.dtype, device=recipe.device, allow_pickle=recipe.allow_pickle, need_tokenizer=needs_text,
        device_map=recipe.device_map, trust_remote_code=recipe.trust_remote_code, load_in_4bit=recipe.load_in_4bit,
    )
    if recipe.granularity != "block":
        from hf_layerprune.surgery.sublayer import check_sublayer_support  # sublayer imports the DeciLM export (deferred)

        check_sublayer_support(model.config.model_type)
    section = SourceSection(
        base_model=source.name, base_revision=source.revision,
        model_type=model.config.model_type, dtype=_dtype_name(model, source, recipe),
        num_layers_before=model.config.num_hidden_layers, parameters_before=count_parameters(model),
    )
    return model, tokenizer, section


def _dtype_name(model, source: Source, recipe: Recipe) -> str:
    """The weights' dtype; a model loaded in 4-bit names the checkpoint's (what the output is written in): its
    config as stored, since loading sets the model's config to the compute dtype."""
    if quantized.is_4bit(model):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source.pretrained_id, revision=source.revision,
                                            trust_remote_code=recipe.trust_remote_code)
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        return str(stored or "bfloat16").replace("torch.", "")
    return str(next(model.parameters()).dtype).replace("torch.", "")


def select(model, tokenizer, recipe: Recipe, *, log: Log = print) -> tuple[list[int], ScoringSection | None]:
    """The units to remove and the report's scoring section (None for `--layers` or a config-only rule):
    `auto` compares candidate cuts (auto.py), a metric scores and selects (scoring/), a rule needs only the depth."""
    if not uses_metric(recipe):
        return explicit_or_rule(recipe, model.config.num_hidden_layers), None
    if recipe.metric_name == AUTO:
        return auto_select(model, tokenizer, recipe, log=log)
    removed, record = select_for_recipe(model, tokenizer, recipe, log=log)
    return removed, ScoringSection.from_dict(record)


def cut(model, removed: list[int], *, log: Log = print) -> CutSection:
    """Remove whole layers in place (surgery.remove_layers); the report's cut section."""
    num_layers = model.config.num_hidden_layers
    log(f"Removing layers {removed} of {num_layers}")
    remove_layers(model, removed)
    return CutSection(num_layers_after=model.config.num_hidden_layers, removed_layers=removed,
                      kept_layers=kept_layers(removed, num_layers), parameters_after=count_parameters(model))


def export_sublayers(model, tokenizer, removed_attention: list[int], removed_mlp: list[int], folder: str | Path,
                     recipe: Recipe, *, log: Log = print) -> CutSection:
    """The cut stage of a sub-layer plan: `model` without those attention / MLP sub-layers (a layer in both lists
    goes whole) written into `folder` as a DeciLM / Nemotron-NAS checkpoint with the tokenizer
    (surgery.sublayer.export_decilm); the report's cut section (`export`: the layout, KV cache per token)."""
    from hf_layerprune.surgery.sublayer import export_decilm  # the DeciLM export (deferred with its modelling code)

    num_layers = model.config.num_hidden_layers
    what = " and ".join(f"{kind} sub-layers {units}" for kind, units in (("attention", removed_attention),
                                                                       ("mlp", removed_mlp)) if units)
    log(f"Removing {what} of {num_layers} (DeciLM / Nemotron-NAS export)")
    summary = export_decilm(model, removed_attention, removed_mlp, folder, max_shard_size=recipe.max_shard_size,
                            overwrite=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    whole = summary["removed_layers"]
    export = ExportSection(format="decilm", architecture="DeciLMForCausalLM", trust_remote_code=True,
                           block_configs=summary["block_configs"],
                           kv_cache_bytes_per_token=summary["kv_cache_bytes_per_token"])
    return CutSection(num_layers_after=num_layers - len(whole), removed_layers=whole,
                      kept_layers=kept_layers(whole, num_layers), export=export,
                      removed_sublayers={"attention": summary["removed_attention"], "mlp": summary["removed_mlp"]})


def heal(model, tokenizer, recipe: Recipe, cut_section: CutSection, *, base=None, chain=None,
         log: Log = print) -> tuple[HealingSection, CutSection]:
    """Heal the cut model in place with the recipe's healer chain; the healing section and the cut section as it
    is afterwards (`replace` puts the first layer of each removed block back as its trained replacement: a new
    section, the one given is left as it was).

    `base`: the unpruned model (a `SharedBase` view or a separate model), for healers that compare with it;
    `chain`: the checked heal chain (plan.Plan.heal; default: read from the recipe)."""
    return heal_for_recipe(model, tokenizer, recipe, cut_section, base_model=base, log=log, chain=chain)


def evaluate(base, model, tokenizer, recipe: Recipe, *, log: Log = print) -> EvaluationSection:
    """lm-eval tasks, perplexity, speed and size of the pruned model and (when `base` is given) of the base, with
    identical settings: the report's evaluation section (evaluation/)."""
    return EvaluationSection.from_dict(evaluate_for_recipe(base, model, tokenizer, recipe, log=log))


def save(model, tokenizer, recipe: Recipe, folder: str | Path, *, source: Source | None = None,
         removed: list[int] | None = None, card=None) -> dict[str, Any]:
    """Write the tokenizer, the source's side files (licence, generation config) and every output format of the
    recipe (formats.OUTPUT_FORMATS: sharded safetensors, GGUF, ...) into `folder`, each checked by its verifier;
    returns the formats' report sections by key (e.g. {"gguf": {...}}). `removed`: the cut's layers, which a GGUF
    source's surgery needs; `card`: gguf_route.card_fields, for the GGUF's metadata."""
    folder = Path(folder)
    source = source or resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle, check_files=False)
    if source.kind == "dir":
        copy_side_files(source.path, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    sections = {}
    for entry in formats_of(recipe):
        section = entry.call("writer", model, tokenizer, recipe, folder, source=source, removed=removed or [], card=card)
        entry.call("verifier", folder)
        if entry.record and section is not None:
            sections[entry.record] = section
    return sections


def write_safetensors(model, tokenizer, recipe: Recipe, folder: Path, *, source: Source, removed: list[int],
                      card=None) -> None:
    """The safetensors format's writer: `save_pretrained` in shards, or for a model loaded in 4-bit the source's
    shards cut on disk with the adapter merged."""
    if quantized.is_4bit(model):  # the 16-bit output, from the original shards with the adapter merged there
        _save_from_shards(model, recipe, folder, source, removed)
    else:
        try:
            model.save_pretrained(folder, max_shard_size=recipe.max_shard_size)
        except OSError:
            raise  # one line from cli_errors, naming the file
        except Exception as exc:  # safetensors' own error for a full disk (os error 28) or a failed write
            if "os error" not in str(exc).lower() and "no space" not in str(exc).lower():
                raise
            raise OutputError(f"could not save the model into {folder}: {str(exc).splitlines()[0]}") from None


def _save_from_shards(model, recipe: Recipe, folder: Path, source: Source, removed: list[int]) -> None:
    """A model loaded in 4-bit is never saved itself: the source's shards are cut on disk and the QLoRA adapter
    (unmerged in the 4-bit model) is merged into their 16-bit weights one tensor at a time."""
    state, scaling = quantized.unmerged_adapter(model)
    checkpoint = local_checkpoint(source, allow_pickle=recipe.allow_pickle)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".shards-") as tmp:  # write_merged wants an empty folder
        write_merged(checkpoint, tmp, removed, state, scaling or 1.0, max_shard_size=recipe.max_shard_size)
        for path in Path(tmp).iterdir():
            os.replace(path, folder / path.name)


def publish(folder: str | Path, repo_id: str, **options: Any):
    """Push an output folder to the Hub as one verified commit (hub.publish_folder, docs/publishing.md)."""
    return publish_folder(folder, repo_id, **options)
