"""Scoring with one decoder layer in memory at a time (``--offload``), for models larger than the device.

``StreamedScoringContext`` is a ScoringContext whose activations come from ``layer_stream.StreamedModel``
instead of a loaded model, so the metrics themselves are unchanged:

- static metrics (angular, bi, cosine) read ``stats()``: the residual stream at every layer boundary, fed to
  the same ``ResidualStats`` the in-memory capture uses (one streamed pass, each layer loaded once);
- ``shapley`` (leave-one-out) and ``ppl`` (SLEB, greedy) read ``cache.loss``: for each ``reset(removed)`` one
  streamed pass computes the loss without every remaining layer at once (all branches advance together).

Gradient metrics (``gradient``, ``taylor``) need a backward pass through the whole model and sub-layer units
need the sub-modules' outputs; both are refused here with one line.
"""

from __future__ import annotations

from functools import cached_property

import torch

from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.surgery.layer_stream import StreamedModel
from hf_layerprune.scoring.base import METRICS, ScoringContext



class _StreamedLosses:
    """The part of prefix_cache.ActivationCache's interface the leave-one-out metrics use."""

    def __init__(self, ctx: "StreamedScoringContext") -> None:
        self.ctx = ctx
        self.removed: tuple[int, ...] | None = None
        self.result: dict | None = None

    def reset(self, removed=()) -> None:
        removed = tuple(sorted(removed))
        if removed != self.removed or self.result is None:
            self.ctx.log(f"Streaming leave-one-out losses (removed so far: {list(removed)})")
            self.result = self.ctx.streamed.leave_one_out_losses(self.ctx.micro_batches(), removed)
            self.removed = removed

    def loss(self, extra=()) -> float:
        extra = list(extra)
        if not extra:
            return self.result["base"]
        if len(extra) == 1:
            return self.result["without"][extra[0]]
        raise ConfigError("layer-streamed scoring supports leave-one-out only (shapley:estimator=loo)")


class StreamedScoringContext(ScoringContext):
    def __init__(self, streamed: StreamedModel, batches: torch.Tensor, *, granularity: str = "block",
                 batch_size: int = 4, seed: int = 0, log=None) -> None:
        if granularity != "block":
            raise ConfigError("--offload scores whole layers only; drop --offload for --granularity attention|mlp")
        # The skeleton (meta layers replaced by relays) stands in for the model: same config, same layer count.
        super().__init__(streamed.skeleton, batches, granularity=granularity, batch_size=batch_size, seed=seed,
                         keep_states=False, log=log)
        self.streamed = streamed

    def micro_batches(self) -> list[torch.Tensor]:
        return list(torch.split(self.batches, self.batch_size))

    @cached_property
    def cache(self):
        return _StreamedLosses(self)

    def stats(self, removed=()):
        from hf_layerprune.scoring.capture import ResidualStats

        if removed:
            raise ConfigError("with --offload, static metrics score the full model once (use --selection topk or contiguous)")
        if self._stats is None:
            self.log("Streaming the residual stream through every layer")
            states = self.streamed.boundary_states(self.micro_batches())
            stats = ResidualStats(self.num_points)
            for b in range(len(states[0])):
                stats.add([states[layer][b] for layer in range(len(states))])
            self._stats = stats
        return self._stats


def check_streamable(metric_name: str) -> None:
    if not METRICS.has(metric_name, "streamable"):
        raise ConfigError(
            f"--metric {metric_name} needs the whole model in memory (backward pass); with --offload use one of "
            f"{', '.join(METRICS.with_capability('streamable'))}"
        )
