"""The Metric interface, its registry, the scores it returns and the context it scores in.

A metric is one small class registered by name. It declares the granularities that make sense for it, its
default selection strategy, and whether a higher score means a more important unit. Units are layer indices;
with ``granularity="attention"`` or ``"mlp"`` a unit is that sub-layer of the layer with that index.

``score(ctx, removed=(), candidates=None)`` scores every unit of the model *with `removed` units already
skipped* (greedy selection rescoring after each removal calls it again); iterative metrics may score only
`candidates` and leave ``None`` for the other units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar

import torch

from hf_layerprune.architectures import get_architecture
from hf_layerprune.errors import LayerPruneError
from hf_layerprune.recipe import GRANULARITIES


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


class Metric:
    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what it measures and the paper it comes from
    granularities: ClassVar[tuple[str, ...]] = ("block",)
    default_selection: ClassVar[str] = "topk"
    higher_is_more_important: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True
    needs_states: ClassVar[bool] = False  # keeps every layer's input for every sample (prefix cache)
    options: ClassVar[dict[str, Any]] = {}  # option name -> default (`--metric name:key=value`)

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise LayerPruneError(f"--metric {self.name} has no option {unknown[0]!r} (options: {known})")
        self.config = {**self.options, **{k: option_value(self.name, k, v, self.options[k]) for k, v in options.items()}}

    def check_granularity(self, granularity: str) -> None:
        if granularity not in self.granularities:
            raise LayerPruneError(
                f"--metric {self.name} does not support --granularity {granularity}; it scores: {', '.join(self.granularities)}"
            )

    def score(self, ctx: "ScoringContext", removed: tuple[int, ...] = (), candidates: list[int] | None = None) -> Scores:
        raise NotImplementedError


def option_value(metric: str, key: str, text: Any, default: Any) -> Any:
    """`--metric name:key=value`'s value as the type of the option's default ("false" is False, not True)."""
    if not isinstance(text, str):
        return text
    if isinstance(default, bool):
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if text.lower() not in words:
            raise LayerPruneError(f"--metric {metric}:{key}={text} is not true or false")
        return words[text.lower()]
    try:
        return type(default)(text) if default is not None else text
    except ValueError:
        raise LayerPruneError(f"--metric {metric}:{key}={text} is not {type(default).__name__}") from None


_REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    _REGISTRY[cls.name] = cls
    return cls


def available_metrics() -> list[str]:
    return list(_REGISTRY)


def metric_class(name: str) -> type[Metric]:
    if name not in _REGISTRY:
        raise LayerPruneError(f"unknown --metric {name!r}; use one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_metric(spec: str) -> Metric:
    """A metric from ``name`` or ``name:key=value[:key=value]`` (e.g. ``shapley:estimator=sampled``)."""
    name, *parts = str(spec).strip().split(":")
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise LayerPruneError(f"cannot read metric option {part!r} in {spec!r}; write name:key=value")
        options[key.strip().replace("-", "_")] = value.strip()
    try:
        return metric_class(name)(**options)
    except ValueError as exc:
        raise LayerPruneError(f"bad option value in --metric {spec!r}: {exc}") from None


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
            raise LayerPruneError(f"unknown --granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
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
            raise LayerPruneError("this metric needs calibration data")
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
        return 2 * self.num_units + 1 if self.sublayers else self.num_units + 1

    def stats(self, removed: tuple[int, ...] = ()):
        """ResidualStats of the model with `removed` skipped (the capture pass's own when nothing is)."""
        from hf_layerprune.scoring.capture import ResidualStats

        cache = self.cache
        if not removed:
            return self._stats
        stats = ResidualStats(self.num_points)
        cache.walk(removed, stats.add)
        return stats.reduce()
