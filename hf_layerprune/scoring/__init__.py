"""Layer-importance scoring: every metric from the papers in one registry, on one shared calibration pass.

Metrics (stable names; one small class each, docstrings cite the paper):

| name     | paper                      | granularities        | default selection |
|----------|----------------------------|----------------------|-------------------|
| angular  | Gromov et al. 2024         | block                | contiguous        |
| bi       | ShortGPT                   | block, attention, mlp| topk              |
| cosine   | LLM-Streamline             | block                | contiguous        |
| shapley  | Siddiqui et al. 2024       | block, attention, mlp| topk              |
| ppl      | SLEB (greedy)              | block, attention, mlp| greedy            |
| gradient | GradMAP                    | block, attention, mlp| greedy            |
| taylor   | Shortened LLaMA            | block, attention, mlp| topk              |
| last     | Gromov et al. heuristic    | all                  | topk (= the rule) |
| reverse  | Lu et al. reverse order    | all                  | topk (= the rule) |
| random   | seeded baseline            | all                  | topk              |

``select_for_recipe(model, tokenizer, recipe)`` scores with one metric and selects; ``analyze(...)`` scores several
metrics for the `analyze` command. `auto` (the default) is not a metric: it is a selection strategy above scoring
(hf_layerprune/auto.py) that compares the candidate cuts of several metrics. See docs/scoring.md.
"""

from hf_layerprune.scoring.base import Metric, Scores, ScoringContext, available_metrics, get_metric, register
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
