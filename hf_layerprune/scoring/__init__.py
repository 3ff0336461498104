"""Layer-importance scoring: every metric from the papers in one registry, on one shared calibration pass.

Metrics are one small class each (docstrings cite the paper), registered in ``METRICS`` (registry.py) in the order
of ``--metric all``; each carries what the card, the help and the routes read (description, citations, tags,
capabilities, options). docs/scoring.md has the table (tests/test_registry.py checks it against the registry).

``select_for_recipe(model, tokenizer, recipe)`` scores with one metric and selects; ``analyze(...)`` scores several
metrics for the `analyze` command. `auto` (the default) is not a metric: it is a selection strategy above scoring
(hf_layerprune/flow/auto.py) that compares the candidate cuts of several metrics. See docs/scoring.md.
"""

from hf_layerprune.scoring.base import (
    METRICS, SELECTIONS, AutoSelection, Metric, Scores, ScoringContext, TargetSelection, available_metrics, get_metric,
    register,
)
# Registration order is the order of `--metric all`.
from hf_layerprune.scoring import static  # noqa: F401,E402
from hf_layerprune.scoring import leave_one_out  # noqa: F401,E402
from hf_layerprune.scoring import gradient  # noqa: F401,E402
from hf_layerprune.scoring import baselines  # noqa: F401,E402
from hf_layerprune.scoring.run import analyze, build_context, run_metric, select_for_recipe
from hf_layerprune.recipe import DEFAULT_METRIC, DEFAULT_SUBLAYER_METRIC, default_metric  # noqa: E402

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_SUBLAYER_METRIC",
    "METRICS",
    "SELECTIONS",
    "AutoSelection",
    "TargetSelection",
    "Metric",
    "Scores",
    "ScoringContext",
    "analyze",
    "available_metrics",
    "build_context",
    "default_metric",
    "get_metric",
    "register",
    "run_metric",
    "select_for_recipe",
]
