"""Baselines that need no calibration data, expressed as per-unit scores so that every strategy applies.

With the default ``topk`` they reproduce their rule exactly: the n lowest scores are the n units the rule
removes (protected units are skipped, so the rule moves past them).
"""

from __future__ import annotations

import torch

from hf_layerprune.scoring.base import Metric, Scores, register


@register
class Last(Metric):
    """Gromov et al. 2024's simple heuristic: remove the deepest layers *before* the final one.
    Score = depth rank, with the final layer ranked most important."""

    name = "last"
    summary = "Gromov et al. heuristic: the deepest layers before the final one"
    description = 'the deepest layers before the final one (a rule, no calibration)'
    citations = ('gromov2024',)
    tags = ('last-layers',)
    capabilities = frozenset({'config_only', 'streamable'})
    granularities = ("block", "attention", "mlp")
    needs_calibration = False

    def score(self, ctx, removed=(), candidates=None):
        n = ctx.num_units
        return Scores(per_unit=[float(n) if u == n - 1 else float(n - 1 - u) for u in range(n)])


@register
class Reverse(Metric):
    """Reverse-order pruning ("Reassessing Layer Pruning", Lu et al. 2024, arXiv 2411.15558): remove the final
    layers, the last one included. Score = distance from the end."""

    name = "reverse"
    summary = "Lu et al. reverse order: the final layers, last one included"
    description = 'the final layers (a rule, no calibration)'
    citations = ('lu2024',)
    tags = ('reverse-order',)
    capabilities = frozenset({'config_only', 'streamable'})
    granularities = ("block", "attention", "mlp")
    needs_calibration = False

    def score(self, ctx, removed=(), candidates=None):
        n = ctx.num_units
        return Scores(per_unit=[float(n - 1 - u) for u in range(n)])


@register
class Random(Metric):
    """Random units (seeded with --seed): the floor every metric has to beat."""

    name = "random"
    summary = "random units (seeded)"
    description = 'a seeded random choice (a baseline)'
    citations = ()
    tags = ('random-baseline',)
    capabilities = frozenset({'streamable'})
    granularities = ("block", "attention", "mlp")
    needs_calibration = False

    def score(self, ctx, removed=(), candidates=None):
        rng = torch.Generator().manual_seed(ctx.seed)
        return Scores(per_unit=torch.rand(ctx.num_units, generator=rng, dtype=torch.float64).tolist())
