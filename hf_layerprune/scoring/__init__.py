"""Layer-importance scoring: every metric from the papers in one registry, on one shared calibration pass.

Metrics are one small class each (docstrings cite the paper), registered in ``METRICS`` (registry.py) in the order
of ``--metric all``; each carries what the card, the help and the routes read (description, citations, tags,
capabilities, options). docs/scoring.md has the table (tests/test_registry.py checks it against the registry).

``select_for_recipe(model, tokenizer, recipe)`` is the pipeline's scoring stage; ``analyze(...)`` scores several
metrics for the `analyze` command. See docs/scoring.md.
"""

from hf_layerprune.scoring.base import METRICS, Metric, Scores, ScoringContext, available_metrics, get_metric, register
# Registration order is the order of `--metric all`.
from hf_layerprune.scoring import static  # noqa: F401,E402
from hf_layerprune.scoring import leave_one_out  # noqa: F401,E402
from hf_layerprune.scoring import gradient  # noqa: F401,E402
from hf_layerprune.scoring import baselines  # noqa: F401,E402
from hf_layerprune.scoring.run import analyze, build_context, run_metric, select_for_recipe
from hf_layerprune.scoring.auto import AUTO, AUTO_METRICS, AutoSelection, auto_select

# The default *pipeline* metric, chosen from benchmarks/RESULTS.md (SmolLM2-135M-Instruct, quality table): no
# single metric was best at every depth (angular + linear: 93.0% retention at drop 6 but 78.5% and WikiText-2
# perplexity 2379 at drop 9), so `auto` (scoring/auto.py) compares the selections of angular, cosine and bi after
# the default healer's closed-form stand-in (`linear` for `absorb`) on held-out calibration text and keeps the best.
DEFAULT_METRIC = "auto"
# Sub-layers (--granularity attention|mlp): angular and cosine compare block boundaries only; `bi` scores any unit
# from the one capture pass (ShortGPT's signal, used per sub-layer by LLM-Drop).
DEFAULT_SUBLAYER_METRIC = "bi"


def default_metric(granularity: str = "block") -> str:
    return DEFAULT_METRIC if granularity == "block" else DEFAULT_SUBLAYER_METRIC


def metric_for(recipe) -> str:
    """The metric a recipe scores with: its own, else the default for its granularity."""
    return recipe.metric or default_metric(recipe.granularity)

__all__ = [
    "AUTO",
    "AUTO_METRICS",
    "AutoSelection",
    "DEFAULT_METRIC",
    "DEFAULT_SUBLAYER_METRIC",
    "METRICS",
    "Metric",
    "Scores",
    "ScoringContext",
    "analyze",
    "auto_select",
    "available_metrics",
    "build_context",
    "default_metric",
    "metric_for",
    "get_metric",
    "register",
    "run_metric",
    "select_for_recipe",
]
