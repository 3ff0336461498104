"""Gradient-based metrics: one forward + backward pass over the calibration set per scoring.

The pass replays the recorded layer inputs and arguments (capture.py) with removed units skipped, so it works
for every family and needs no embedding or mask code. Gradients are of the mean calibration loss, accumulated
over micro-batches; the statistics are summed in fp32.

Prefix caching does not apply here: the gradient at a unit before the first removed one depends on every
layer after it, so each decision needs the whole backward pass. That is one pass per decision instead of one
per candidate (what makes GradMAP cheaper than SLEB).
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from hf_layerprune.runtime import distributed
from hf_layerprune.scoring.base import Metric, Scores, register
from hf_layerprune.scoring.capture import (
    layer_output,
    nll_sum,
    run_layers,
    unit_parameters,
    zeroed_sublayers,
)
from hf_layerprune.architectures.base import get_submodule


def update_gradient_scores(ctx, removed: tuple[int, ...] = ()) -> list[float | None]:
    """Per unit: Σ over calibration tokens of |⟨∂L/∂Δ_t, Δ_t⟩|, Δ_t the unit's residual update at token t.

    That is the magnitude of the first-order change of the loss when the unit's update is removed. Only
    activations get gradients (no weight gradients are formed), so the backward pass is cheap."""
    cache = ctx.cache
    layers = ctx.arch.get_layers(ctx.model)
    kept = [u for u in range(ctx.num_units) if u not in removed]
    totals = {u: 0.0 for u in kept}
    saved = {p: p.requires_grad for p in ctx.model.parameters()}
    try:
        for p in ctx.model.parameters():
            p.requires_grad_(False)
        for cap in cache.captures:
            updates: dict[int, torch.Tensor] = {}
            with torch.enable_grad(), ExitStack() as stack:
                if ctx.sublayers:
                    stack.enter_context(zeroed_sublayers(ctx.model, ctx.arch, ctx.granularity, removed))
                    path = ctx.arch.attention_out if ctx.granularity == "attention" else ctx.arch.mlp_out
                    for u in kept:
                        def keep(module, args, out, u=u):
                            updates[u] = layer_output(out)
                        stack.callback(get_submodule(layers[u], path).register_forward_hook(keep).remove)
                inputs: dict[int, torch.Tensor] = {}

                def store(idx: int, hidden: torch.Tensor) -> None:
                    inputs[idx] = hidden

                first = cap.inputs[0].detach().requires_grad_(True)
                skip = set(removed) if not ctx.sublayers else set()
                hidden = run_layers(layers, cap, first, 0, skip=skip, on_input=store)
                loss = nll_sum(ctx.model, ctx.arch, hidden, cap.ids) / cache.tokens
                if ctx.sublayers:
                    targets = {u: updates[u] for u in kept}
                    deltas = {u: t.detach() for u, t in targets.items()}
                else:
                    targets = {u: inputs[u + 1] for u in kept}
                    deltas = {u: (inputs[u + 1] - inputs[u]).detach() for u in kept}
                grads = torch.autograd.grad(loss, list(targets.values()), allow_unused=True)
            for u, g in zip(targets, grads):
                if g is not None:
                    totals[u] += (g.float() * deltas[u].float()).sum(-1).abs().sum().item()
        out: list[float | None] = [None] * ctx.num_units
        for u, v in zip(totals, distributed.all_sum_floats(list(totals.values()))):  # every rank's micro-batches
            out[u] = v
        return out
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


def taylor_scores(ctx, removed: tuple[int, ...] = ()) -> list[float | None]:
    """Per unit: Σ|W·∇W| over the unit's weights for the loss of the model with `removed` skipped."""
    cache = ctx.cache
    layers = ctx.arch.get_layers(ctx.model)
    kept = [u for u in range(ctx.num_units) if u not in removed]
    params = {u: unit_parameters(layers[u], ctx.arch, ctx.granularity) for u in kept}
    wanted = {id(p) for ps in params.values() for p in ps}
    saved = {p: p.requires_grad for p in ctx.model.parameters()}
    skip = set(removed) if ctx.granularity == "block" else set()
    try:
        for p in ctx.model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        zero = zeroed_sublayers(ctx.model, ctx.arch, ctx.granularity, removed) if ctx.sublayers else None
        with torch.enable_grad(), (zero or ExitStack()):
            for cap in cache.captures:
                hidden = run_layers(layers, cap, cap.inputs[0], 0, skip=skip)
                (nll_sum(ctx.model, ctx.arch, hidden, cap.ids) / cache.tokens).backward()
        taylor: list[float | None] = [None] * ctx.num_units
        if distributed.is_distributed():  # the gradient of the whole calibration loss: every rank's share summed
            for ps in params.values():
                for p in ps:  # a rank without micro-batches has no gradient: it adds zeros
                    local = p.grad if p.grad is not None else torch.zeros_like(p)
                    p.grad = distributed.all_sum(local).to(device=p.device, dtype=p.dtype)
        for u, ps in params.items():
            taylor[u] = sum((p.detach().float() * p.grad.float()).abs().sum().item() for p in ps if p.grad is not None)
        return taylor
    finally:
        for p, flag in saved.items():
            p.grad = None
            p.requires_grad_(flag)


@register
class Gradient(Metric):
    """GradMAP, Liu et al. 2026 (arXiv 2602.14649): a global importance from gradient magnitudes, recomputed
    after each removal with one backward pass per pruning decision. The exact formula is not public
    (papers.md §5). We use the gradient of the loss at each unit's residual update Δ, weighted by that update:
    s_u = Σ_tokens |⟨∂L/∂Δ_u, Δ_u⟩|, the magnitude of the first-order loss change when the unit is skipped
    (exactly 0 for a unit that changes nothing; weight-level |W·∇W| is the `taylor` metric). Higher = more
    important; default greedy."""

    name = "gradient"
    summary = "GradMAP-style: |<dL/d update, update>| per unit from one backward, recomputed after each removal"
    description = 'gradient-magnitude importance'
    citations = ('gradmap',)
    tags = ('gradmap',)
    granularities = ("block", "attention", "mlp")
    default_selection = "greedy"

    def score(self, ctx, removed=(), candidates=None):
        return Scores(per_unit=update_gradient_scores(ctx, tuple(removed)))


@register
class Taylor(Metric):
    """Shortened LLaMA, Kim et al. 2024 (arXiv 2402.02834): first-order Taylor importance of a block,
    Σ over its weights of |W ⊙ ∂L/∂W|, from one backward pass. Higher = more important."""

    name = "taylor"
    summary = "Shortened LLaMA Taylor: sum |W * dL/dW| per unit from one backward pass"
    description = 'first-order Taylor importance |W·∇W|'
    citations = ('shortened_llama',)
    tags = ('taylor-importance',)
    granularities = ("block", "attention", "mlp")

    def score(self, ctx, removed=(), candidates=None):
        return Scores(per_unit=taylor_scores(ctx, tuple(removed)))
