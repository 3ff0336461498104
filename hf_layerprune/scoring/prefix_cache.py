"""Cached layer inputs: evaluate "the model minus these units" by running only the layers after the prefix.

``ActivationCache`` runs the calibration set through the model once (``capture_batch``) and keeps, per
micro-batch, the recorded arguments of every layer and the residual stream entering every layer. The stored
inputs always describe one *removal state* (units already removed, e.g. by greedy selection; removed layers
pass their input through, removed sub-layers add zero). Then

- ``loss(extra)`` is the calibration loss with `extra` units removed as well; the hidden states entering the
  first of them are unchanged, so only layers from there on run, plus the final norm and ``lm_head``;
- ``commit(unit)`` makes a removal permanent and recomputes the stored inputs after it (one partial pass).

Iterative metrics (leave-one-out, subnetwork sampling, SLEB greedy) cost about half of the naive approach
that runs the whole model for every candidate; ``naive_loss`` is that approach, for tests and benchmarks.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator

import torch

from hf_layerprune.runtime import distributed
from hf_layerprune.scoring.capture import (
    BatchCapture,
    capture_batch,
    nll_sum,
    point_count,
    predicted_tokens,
    capture_rows,
    record_mids,
    run_layers,
    skipped_units,
    zeroed_sublayers,
)


class ActivationCache:
    def __init__(
        self,
        model,
        arch,
        batches: torch.Tensor,
        *,
        granularity: str = "block",
        batch_size: int = 4,
        keep_states: bool = True,
        on_points: Callable[[list[torch.Tensor]], None] | None = None,
        split: bool = False,
    ) -> None:
        """Micro-batches of `batch_size` sequences, fewer where the residual points one capture holds would pass
        ``capture_rows``' budget. `on_points(points)` sees every micro-batch's residual points during the capture pass (static metrics
        accumulate their statistics there, so they need no pass of their own). With ``keep_states=False`` only
        each micro-batch's first input and layer arguments are kept (enough to replay the model).

        With `split`, in a multi-process launch each rank keeps its share of the micro-batches (distributed.shard)
        and the losses are summed over the ranks: every rank gets the loss of the whole calibration set."""
        self.model, self.arch, self.granularity = model, arch, granularity
        self.layers = arch.get_layers(model)
        self.num_layers = len(self.layers)
        self.keep_states = keep_states
        device = next(model.parameters()).device
        self.captures: list[BatchCapture] = []
        self.split = split
        points = point_count(self.num_layers, granularity != "block")
        micro = list(batches.split(capture_rows(model, points, batches.shape[1], batch_size)))
        with torch.no_grad():
            for ids in distributed.shard(micro) if split else micro:
                cap = capture_batch(model, arch, ids.to(device), sublayers=granularity != "block")
                if on_points is not None:
                    on_points(cap.points())
                cap.mids = None
                if not keep_states:
                    cap.inputs = cap.inputs[:1]
                self.captures.append(cap)
        self.tokens = self._total(sum(predicted_tokens(c.ids) for c in self.captures))
        self._original = [list(c.inputs) for c in self.captures]
        self.removed: tuple[int, ...] = ()

    # ------------------------------------------------------------------------------------------ removal state

    def reset(self, removed: Iterable[int] = ()) -> None:
        """Make the stored inputs describe `removed` (commits only the new units when it extends the state)."""
        removed = tuple(removed)
        if set(self.removed) - set(removed):
            for cap, original in zip(self.captures, self._original):
                cap.inputs = list(original)
            self.removed = ()
        for unit in removed:
            if unit not in self.removed:
                self.commit(unit)

    def commit(self, unit: int) -> None:
        """Remove `unit` for good and refresh the stored inputs of the layers after it."""
        self._require_states()
        new = (*self.removed, unit)
        with torch.no_grad(), self._skipping(new) as skip:
            for cap in self.captures:
                def store(idx: int, hidden: torch.Tensor, inputs=cap.inputs) -> None:
                    inputs[idx] = hidden

                run_layers(self.layers, cap, cap.inputs[unit], unit, skip=skip, on_input=store)
        self.removed = new

    # ------------------------------------------------------------------------------------------ losses

    def loss(self, extra: Iterable[int] = ()) -> float:
        """Mean next-token NLL over the calibration tokens with the current removals plus `extra`."""
        self._require_states()
        extra = tuple(extra)
        start = min(extra) if extra else self.num_layers
        total = 0.0
        with torch.no_grad(), self._skipping((*self.removed, *extra)) as skip:
            for cap in self.captures:
                hidden = run_layers(self.layers, cap, cap.inputs[start], start, skip=skip)
                total += nll_sum(self.model, self.arch, hidden, cap.ids).item()
        return self._total(total) / self.tokens

    def naive_loss(self, extra: Iterable[int] = ()) -> float:
        """The same loss by running the whole stock model forward (what peers do for every candidate)."""
        units = (*self.removed, *extra)
        total = 0.0
        with torch.no_grad(), skipped_units(self.model, self.arch, self.granularity, units):
            for cap in self.captures:
                logits = self.model(input_ids=cap.ids, use_cache=False).logits
                for row in range(logits.shape[0]):
                    total += torch.nn.functional.cross_entropy(
                        logits[row, :-1].float(), cap.ids[row, 1:], reduction="sum"
                    ).item()
        return self._total(total) / self.tokens

    def _total(self, local: float) -> float:
        """`local` summed over the ranks when the micro-batches are split (float64; int stays int)."""
        if not (self.split and distributed.is_distributed()):
            return local
        total = distributed.all_sum_floats([float(local)])[0]
        return int(round(total)) if isinstance(local, int) else total

    # ------------------------------------------------------------------------------------------ walks

    def walk(self, removed: Iterable[int], on_points: Callable[[list[torch.Tensor]], None]) -> None:
        """Replay the model with `removed` units skipped from each micro-batch's first input and hand every
        micro-batch's residual points (original indexing; removed units repeat their input) to `on_points`."""
        sub = self.granularity != "block"
        with torch.no_grad(), self._skipping(removed) as skip:
            for cap in self.captures:
                replay = BatchCapture(ids=cap.ids, inputs=[None] * (self.num_layers + 1))  # type: ignore[list-item]
                mids: dict[int, torch.Tensor] = {}

                def store(idx: int, hidden: torch.Tensor, inputs=replay.inputs) -> None:
                    inputs[idx] = hidden

                with record_mids(self.layers, self.arch, replay.inputs, mids) if sub else nullcontext():
                    run_layers(self.layers, cap, cap.inputs[0], 0, skip=skip, on_input=store)  # input 0 never changes
                if sub:
                    replay.mids = [mids[i] for i in range(self.num_layers)]
                on_points(replay.points())

    @contextmanager
    def _skipping(self, units: Iterable[int]) -> Iterator[set[int]]:
        """Yields the layers `run_layers` must skip; sub-layers are zeroed by hooks meanwhile instead."""
        units = sorted(set(units))
        if self.granularity == "block":
            yield set(units)
            return
        with zeroed_sublayers(self.model, self.arch, self.granularity, units):
            yield set()

    def _require_states(self) -> None:
        if not self.keep_states:
            raise RuntimeError("this ActivationCache was built with keep_states=False")
