"""The checked plan of a run: every check that can run before a download or a load, done once, in one place.

`make_plan(recipe)` reads the recipe (every option of every stage, the heal chain typed and range-checked), the
output folder, the source (local folder, GGUF file or Hub id: for the Hub, its file list and its config.json alone,
never the weights), the target against that config, the format, and the checkpoint's consistency; it returns an
immutable `Plan` that `pipeline.execute` runs. Nothing is downloaded, loaded or written before it returns, so a
mistyped option or an impossible target costs nothing (tests/test_bad_input.py, tests/test_checks_first.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hf_layerprune.runtime import distributed
from hf_layerprune.surgery.checkpoint import check_weights
from hf_layerprune.flow.checks import (check_4bit_source, check_recipe, check_source_layers, check_target_against, light_config,
                                  source_config, source_paths)
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.runtime.formats import formats_of
from hf_layerprune.flow.gguf_route import check_sublayer_gguf, resolve_format
from hf_layerprune.hub import hub_files, local_checkpoint, resolved_revision
from hf_layerprune.surgery.loading import Source, resolve_source
from hf_layerprune.runtime.outputs import check_output_dir
from hf_layerprune.recipe import Recipe
from hf_layerprune.surgery.layers import side_files
from hf_layerprune.flow.targets import uses_metric

@dataclass(frozen=True)
class Plan:
    """What a run will do, checked: the recipe (defaults resolved), the source, the route (`gguf`: a GGUF file cut
    block by block; `streaming`: a safetensors cut on disk; `in-memory`: load, select, cut, heal, evaluate, save),
    the output format, the heal chain (healing.HealStep, typed options) and the source's resolved revision."""

    recipe: Recipe
    source: Source
    route: str
    format: str
    heal: tuple[Any, ...] = ()
    base_revision: str | None = None


def make_plan(recipe: Recipe) -> Plan:
    """Every check of `recipe` that needs no weights, cheapest first; the plan to run. The output folder is named
    and the options are read before any library is asked for a task list or a file."""
    if not recipe.output_dir:
        raise ConfigError("give --output-dir DIR for the pruned model")
    heal = check_recipe(recipe)  # the heal chain, read once
    distributed.check_recipe(recipe, any(step.healer.trained for step in heal))
    source = resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle, check_files=False)
    fmt = resolve_format(recipe, source)
    route = "gguf" if fmt == "gguf" and source.kind == "gguf" and not _needs_gguf_model(recipe) else \
        "in-memory" if needs_model_in_memory(recipe, source) else "streaming"

    def checks() -> str | None:  # rank 0 alone in a multi-process launch; the others wait for the outcome
        check_output_dir(recipe.output_dir, recipe.overwrite, source_paths(source))
        files = hub_files(source) if source.kind == "hub" else None  # gated, missing, Meta-format: said first
        config = None
        if source.kind == "hub":  # its config.json alone: the target is checked before any weight is downloaded
            config = source_config(source, trust_remote_code=recipe.trust_remote_code)
        elif route != "gguf":
            config = light_config(source, trust_remote_code=recipe.trust_remote_code)
        if config is not None:
            check_target_against(recipe, config.num_hidden_layers)
            check_sublayer_gguf(recipe, config)
        check_4bit_source(recipe, source, files)
        if source.kind == "hub" and route == "in-memory" and distributed.is_distributed():
            local_checkpoint(source, allow_pickle=recipe.allow_pickle)  # one download; the other ranks read the cache
        if source.kind == "dir" and any(source.path.glob("*.safetensors")):
            check_weights(source.path)  # every shard whole, before the first stage reads one
            if config is not None:
                check_source_layers(source, config)  # and holding exactly the config's layers
        if source.kind == "dir":
            side_files(source.path)  # no side file is a link out of the folder (refused before any work)
        return resolved_revision(source) if source.kind == "hub" else source.revision

    base_revision = distributed.on_main(checks, share=True)
    return Plan(recipe, source, route, fmt, heal, base_revision)


def _needs_gguf_model(recipe: Recipe) -> bool:
    """A GGUF source is dequantized only for scoring, healing or evaluation; a plain cut copies its blocks."""
    return recipe.granularity != "block" or recipe.heal != "none" or recipe.evaluate or uses_metric(recipe)


def needs_model_in_memory(recipe: Recipe, source: Source) -> bool:
    if recipe.target is not None:  # the plan is judged on the model
        return True
    if any("streamable" not in entry.capabilities for entry in formats_of(recipe)):  # e.g. a GGUF export
        return True
    if source.kind == "gguf" or recipe.granularity != "block" or recipe.heal != "none" or recipe.evaluate:
        return True
    if recipe.layers or recipe.offload:
        return False
    return uses_metric(recipe)
