"""Whether a recipe scores layers, and the layers to remove when it does not (`--layers`, a config-only rule such
as `last`): decided from the recipe and the depth alone, before (and without) importing the scoring stack, which
imports torch. The on-disk routes (streaming.py) and the checks use it; `stages` re-exports both."""

from __future__ import annotations

from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.recipe import Recipe
from hf_layerprune.runtime.selection import config_rule_layers
from hf_layerprune.surgery.layers import validate_removed


def uses_metric(recipe: Recipe) -> bool:
    """True when layers are chosen by scoring: not `--layers`, and not a metric with the `config_only` capability
    (`last`, `reverse`: the selection needs only the depth)."""
    if recipe.layers:
        return False
    from hf_layerprune.scoring import METRICS  # the metrics import torch; `--layers` needs none of them

    return not METRICS.has(recipe.metric_name, "config_only")


def explicit_or_rule(recipe: Recipe, num_layers: int) -> list[int]:
    """`--layers`, or a config-only rule (`last`, `reverse`): the layers to remove, from the depth alone."""
    if recipe.layers:
        return validate_removed(recipe.layers, num_layers)
    if recipe.drop >= num_layers:
        raise ConfigError(f"--drop {recipe.drop} must be smaller than the number of layers ({num_layers})")
    return validate_removed(config_rule_layers(recipe.metric_name, num_layers, recipe.drop), num_layers)
