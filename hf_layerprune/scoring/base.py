"""The Metric interface, its registry, the scores it returns and the context it scores in.

A metric is one small class registered by name. It declares the granularities that make sense for it, its
default selection strategy, and whether a higher score means a more important unit. Units are layer indices;
with ``granularity="attention"`` or ``"mlp"`` a unit is that sub-layer of the layer with that index.

``score(ctx, removed=(), candidates=None)`` scores every unit of the model *with `removed` units already
skipped* (greedy selection rescoring after each removal calls it again); iterative metrics may score only
`candidates` and leave ``None`` for the other units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar

import torch

from hf_layerprune.architectures import get_architecture
from hf_layerprune.runtime.errors import ConfigError, StageError
from hf_layerprune.recipe import GRANULARITIES
from hf_layerprune.runtime.registry import Registry, build_options, split_spec


@dataclass
class Scores:
    """What a metric measured. ``per_unit[i]``: the score of unit i (None where not scored). ``blocks[n][s]``:
    the score of the contiguous block of `n` units starting at `s` (block metrics)."""

    per_unit: list[float | None] | None = None
    blocks: dict[int, list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def unit_scores(self) -> list[float | None]:
        if self.per_unit is not None:
            return self.per_unit
        assert self.blocks is not None
        return list(self.blocks[1])


@dataclass
class NoOptions:
    """This metric takes no options."""


class Metric:
    """One metric; everything the card, the help and the pipeline say about it is declared here (registry.py)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line with its paper: the log, `analyze --json`, the help
    description: ClassVar[str] = ""  # what it measures, as the card's method description says it
    citations: ClassVar[tuple[str, ...]] = ()  # keys of card/bibliography.json
    tags: ClassVar[tuple[str, ...]] = ()  # model-card tags
    # streamable: scored layer by layer from disk (--offload); config_only: the selection needs only the depth
    capabilities: ClassVar[frozenset[str]] = frozenset()
    granularities: ClassVar[tuple[str, ...]] = ("block",)
    default_selection: ClassVar[str] = "topk"
    higher_is_more_important: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True
    needs_states: ClassVar[bool] = False  # keeps every layer's input for every sample (prefix cache)
    options: ClassVar[type] = NoOptions  # `--metric name:key=value,...` (registry.build_options)

    def __init__(self, **options: Any) -> None:
        self.opts = build_options(self.options, f"--metric {self.name}", options)
        self.config = dataclasses.asdict(self.opts)

    @classmethod
    def citation_keys(cls, selection: str | None = None) -> tuple[str, ...]:
        """The papers the card cites for this metric (with ``selection``: some metrics cite more for a strategy)."""
        return cls.citations

    def check_granularity(self, granularity: str) -> None:
        if granularity not in self.granularities:
            raise ConfigError(
                f"--metric {self.name} does not support --granularity {granularity}; it scores: {', '.join(self.granularities)}"
            )

    def score(self, ctx: "ScoringContext", removed: tuple[int, ...] = (), candidates: list[int] | None = None) -> Scores:
        raise NotImplementedError


METRICS: Registry[type[Metric]] = Registry("metric", "--metric")
register = METRICS.register


def available_metrics() -> list[str]:
    return METRICS.names()


def metric_class(name: str) -> type[Metric]:
    return METRICS.get_entry(name)


def get_metric(spec: str) -> Metric:
    """A metric from ``name`` or ``name:key=value,key=value`` (e.g. ``shapley:estimator=sampled``; the old
    ``name:key=value:key=value`` form is read the same)."""
    name, options = split_spec(spec, "--metric")
    return metric_class(name)(**options)


class ScoringContext:
    """The model, the calibration batches and what is computed from them once and shared by every metric:
    the capture pass (``cache``) and the residual-stream statistics of the unpruned model (``stats``)."""

    def __init__(
        self,
        model,
        batches: torch.Tensor | None,
        *,
        granularity: str = "block",
        batch_size: int = 4,
        seed: int = 0,
        keep_states: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ConfigError(f"unknown --granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
        self.model = model
        self.arch = get_architecture(model.config)
        self.batches = batches
        self.granularity = granularity
        self.batch_size = batch_size
        self.seed = seed
        self.keep_states = keep_states
        self.log = log or (lambda msg: None)
        self.num_units = len(self.arch.get_layers(model))
        self._stats = None
        self._memo: dict[tuple, Scores] = {}

    @property
    def sublayers(self) -> bool:
        return self.granularity != "block"

    @cached_property
    def cache(self):
        from hf_layerprune.scoring.capture import ResidualStats
        from hf_layerprune.scoring.prefix_cache import ActivationCache

        if self.batches is None:
            raise StageError("this metric needs calibration data")
        stats = ResidualStats(self.num_points)
        cache = ActivationCache(
            self.model, self.arch, self.batches, granularity=self.granularity, batch_size=self.batch_size,
            keep_states=self.keep_states, on_points=stats.add, split=True,
        )
        self._stats = stats.reduce()  # each rank captured its share of the micro-batches
        return cache

    def full_scores(self, metric: Metric) -> Scores:
        """`metric.score(self)` on the unpruned model, computed once per metric and options (a sweep over
        several depths, or analyze after prune, reuses it)."""
        key = (metric.name, tuple(sorted(metric.config.items())))
        if key not in self._memo:
            self._memo[key] = metric.score(self)
        return self._memo[key]

    @property
    def num_points(self) -> int:
        from hf_layerprune.scoring.capture import point_count

        return point_count(self.num_units, self.sublayers)

    def stats(self, removed: tuple[int, ...] = ()):
        """ResidualStats of the model with `removed` skipped (the capture pass's own when nothing is)."""
        from hf_layerprune.scoring.capture import ResidualStats

        cache = self.cache
        if not removed:
            return self._stats
        stats = ResidualStats(self.num_points)
        cache.walk(removed, stats.add)
        return stats.reduce()


class AutoSelection:
    """What the card and the help say about ``--metric auto`` (no Metric: it compares the AUTO_METRICS' selections)."""

    name = "auto"
    summary = "the best of the angular, cosine and bi selections after the recipe's closed-form healing"
    description = "the best of the angular, cosine and bi selections, judged by held-out calibration loss after healing"
    description_kl = ("the best of the angular, cosine and bi selections, judged after healing by the KL divergence "
                      "from the base model's next-token distribution on held-out calibration text")
    description_long_range = ("the best of the angular, cosine and bi selections and the runner-up positions of the "
                              "contiguous blocks, judged by how well the cut model still predicts the last words of "
                              "long held-out passages (WikiText-2 validation)")
    citations = ("gromov2024", "streamline", "shortgpt")
    tags = ("auto-selection",)

    @classmethod
    def citation_keys(cls, selection: str | None = None) -> tuple[str, ...]:
        return cls.citations


class TargetSelection:
    """What the card says about a `--target` plan (budget.py): no Metric, a mix of whole layers and attention
    sub-layers judged by held-out KL."""

    name = "target"
    summary = "the plan of whole layers and attention sub-layers that meets the --target budget"
    description = ("the plan of whole layers (ranked by bi) and attention sub-layers (ranked by bi) that meets the "
                   "--target budget and best predicts the last words of long held-out passages (WikiText-2 validation)")
    citations = ("shortgpt", "siddiqui2024")
    tags = ("budget-selection",)

    @classmethod
    def citation_keys(cls, selection: str | None = None) -> tuple[str, ...]:
        return cls.citations


SELECTIONS = {AutoSelection.name: AutoSelection, TargetSelection.name: TargetSelection}  # strategies above metrics
