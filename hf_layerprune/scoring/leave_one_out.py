"""Metrics that measure the calibration loss of the model with units removed (prefix-cached, see
prefix_cache.py: only the layers from the first removed unit on are run for each candidate)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hf_layerprune.runtime.registry import option
from hf_layerprune.scoring.base import Metric, Scores, register


def _candidates(ctx, removed, candidates):
    return [u for u in (range(ctx.num_units) if candidates is None else candidates) if u not in removed]


@dataclass
class ShapleyOptions:
    """Options of ``--metric shapley``.

    estimator: loo (each unit left out alone) or sampled (random subnetworks keeping each unit with probability 1/2).
    subnetworks: how many subnetworks `sampled` scores (0: four per unit).
    """

    estimator: str = option("loo", one_of=("loo", "sampled"))
    subnetworks: int = option(0, at_least=0)


@register
class Shapley(Metric):
    """Siddiqui et al. 2024, "A deeper look at depth pruning of LLMs" (arXiv 2407.16286).

    Default estimator ``loo`` (their code's default): the calibration-loss increase when the unit alone is
    removed, loss(without u) − loss(full). Option ``estimator=sampled``: `subnetworks` random subnetworks that
    each keep every unit with probability 1/2; score = mean loss when u is absent − mean loss when present.
    Higher = more important. All granularities (they also score attention and MLP sub-layers).
    """

    name = "shapley"
    summary = "Siddiqui et al.: calibration-loss increase when the unit is left out (or sampled subnetworks)"
    description = 'loss increase when the layer is left out (leave-one-out Shapley)'
    citations = ('siddiqui2024',)
    tags = ('shapley',)
    capabilities = frozenset({'streamable'})
    granularities = ("block", "attention", "mlp")
    needs_states = True
    options = ShapleyOptions

    def score(self, ctx, removed=(), candidates=None):
        cache = ctx.cache
        cache.reset(removed)
        base = cache.loss()
        units = _candidates(ctx, removed, candidates)
        if self.config["estimator"] == "loo":
            out: list[float | None] = [None] * ctx.num_units
            for u in units:
                out[u] = cache.loss([u]) - base
            return Scores(per_unit=out, extra={"base_loss": base})
        return self._sampled(ctx, cache, units, base)

    def _sampled(self, ctx, cache, units, base):
        count = self.config["subnetworks"] or 4 * len(units)
        rng = torch.Generator().manual_seed(ctx.seed)
        present = {u: [] for u in units}
        absent = {u: [] for u in units}
        for _ in range(count):
            mask = torch.rand(len(units), generator=rng) < 0.5
            dropped = [u for u, m in zip(units, mask.tolist()) if not m]
            loss = cache.loss(dropped) if dropped else base
            for u, keep in zip(units, mask.tolist()):
                (present if keep else absent)[u].append(loss)
        out: list[float | None] = [None] * ctx.num_units
        for u in units:
            if present[u] and absent[u]:
                out[u] = sum(absent[u]) / len(absent[u]) - sum(present[u]) / len(present[u])
        return Scores(per_unit=out, extra={"base_loss": base, "subnetworks": count})


@register
class Perplexity(Metric):
    """SLEB, Song et al. 2024 (arXiv 2402.09025): calibration perplexity of the model with the unit removed;
    by default greedy (remove the unit whose removal raises the loss least, rescore, repeat). With
    ``--selection topk`` it is Shortened LLaMA's one-shot PPL criterion (Kim et al. 2024, arXiv 2402.02834).
    Higher = more important. All granularities."""

    name = "ppl"
    summary = "SLEB: calibration perplexity with the unit removed, greedy with rescoring"
    description = 'calibration perplexity with the layer removed'
    citations = ('sleb',)
    tags = ('sleb',)
    capabilities = frozenset({'streamable'})
    granularities = ("block", "attention", "mlp")
    default_selection = "greedy"
    needs_states = True

    @classmethod
    def citation_keys(cls, selection=None):
        """With top-k selection (one scoring pass), the variant Shortened LLaMA uses."""
        return (*cls.citations, "shortened_llama") if selection == "topk" else cls.citations

    def score(self, ctx, removed=(), candidates=None):
        cache = ctx.cache
        cache.reset(removed)
        out: list[float | None] = [None] * ctx.num_units
        for u in _candidates(ctx, removed, candidates):
            out[u] = math.exp(min(cache.loss([u]), 700.0))
        return Scores(per_unit=out, extra={"base_ppl": math.exp(min(cache.loss(), 700.0))})
