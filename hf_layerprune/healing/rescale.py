"""`rescale` (Prune&Comp): training-free magnitude compensation, folded into existing weights.

Removing a run of layers ``a..b`` removes their updates to the residual stream, so the layers after the run read a
stream of smaller magnitude than they were trained on (the "magnitude gap"). Prune&Comp estimates the gap on
calibration text as one scalar per run,

    s = mean over channels c of  E_t |h_{b+1}[t, c]|  /  E_t |h_a[t, c]|

(base points ``a`` and ``b + 1``, pre-norm, every token of the healing text; the paper's `get_scale_params`,
measured here once on the unpruned model instead of after each single-layer removal), and multiplies the stream
entering the first kept layer after the run by ``s``. Every writer of the residual stream before that point is
scaled instead, which is exact because every layer reads the stream through a scale-invariant norm (RMSNorm,
LayerNorm): the input embeddings (and OPT's learned positions), and the attention output projection and the MLP
``down_proj`` of every kept layer before the run, each by the product of the scales of the runs after it. When the
output head is tied to the input embeddings (SmolLM2, Gemma, OPT), scaling the embeddings scales the logits too, so
the final norm's weight (and bias) is divided by the product of all scales: the logits of a given stream are
unchanged, and the output keeps its tied weights (nothing is untied, no parameter is added).

The fold is checked numerically: the fused model's logits equal those of the pruned model with the stream
multiplied by ``s`` at each run's end by forward pre-hooks (relative error < 1e-3 in fp32: the norms' eps makes
the scale invariance inexact where the stream is tiny, ~1e-4 on the random test models). A run at the end of
the model is left alone (only the final norm reads the stream there). ``keep_if_better`` undoes the fold when the
held-out LM loss rose, as for the other closed-form healers.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from hf_layerprune.architectures import get_architecture
from hf_layerprune.architectures.base import get_submodule
from hf_layerprune.runtime.errors import StageError, UnsupportedModel
from hf_layerprune.runtime.registry import option
from hf_layerprune.healing.activations import capture, layers_of
from hf_layerprune.healing.base import HealContext, HealOptions, contiguous_runs, options_record
from hf_layerprune.healing.compensation import Site, fold_refusal, undo_unless_better

OUT_PROJECTIONS = ("o_proj", "out_proj", "dense")  # the attention's output linear, by family


@dataclass
class RescaleOptions(HealOptions):
    """batch_size: sequences per forward pass while measuring the magnitudes; tokens: how much healing text
    measures them (default: the calibration set); keep_if_better: undo the fold when the held-out loss rose."""

    batch_size: int = option(8, at_least=1)
    keep_if_better: bool = True


@torch.no_grad()
def magnitude_scales(ctx: HealContext, runs: list[list[int]], batch_size: int) -> list[float]:
    """Per run a..b: mean over channels of E|h_{b+1}| / E|h_a| on the unpruned model over `ctx.train_ids`."""
    points = sorted({p for run in runs for p in (run[0], run[-1] + 1)})
    sums: dict[int, torch.Tensor] = {}
    for start in range(0, len(ctx.train_ids), batch_size):
        with ctx.as_base() as base:
            got = capture(base, ctx.train_ids[start : start + batch_size], points=points)["points"]
        for p in points:
            part = got[p].double().abs().flatten(0, -2).sum(0).cpu()
            sums[p] = part if p not in sums else sums[p] + part
    return [float((sums[run[-1] + 1] / sums[run[0]].clamp_min(1e-30)).mean()) for run in runs]


def out_projection(attention: torch.nn.Module, path: str) -> str:
    for name in OUT_PROJECTIONS:
        if isinstance(getattr(attention, name, None), torch.nn.Linear):
            return f"{path}.{name}"
    raise UnsupportedModel(f"--heal rescale: no attention output projection ({', '.join(OUT_PROJECTIONS)}) in {path}")


def scaled_sites(model, factors: list[float], total: float, tied: bool) -> list[tuple[Site, float]]:
    """(module, factor) for every residual-stream writer whose output must be multiplied: per kept layer j its
    attention output projection and down_proj by `factors[j]`, the input embeddings (and OPT's positions) by
    `total`, and, with a tied head, the final norm by 1 / `total`."""
    arch = get_architecture(model.config)
    out: list[tuple[Site, float]] = []
    for j, layer in enumerate(layers_of(model)):
        if factors[j] == 1.0:
            continue
        prefix = f"{arch.layers}.{j}"
        attention = out_projection(get_submodule(layer, arch.attention), f"{prefix}.{arch.attention}")
        for path in (attention, f"{prefix}.{arch.down_proj}"):
            out.append((Site(path, j + 1, f"layer {j} {path.rsplit('.', 1)[1]}"), factors[j]))
    out.append((Site(arch.embed, 0, "input embeddings"), total))
    positions = arch.embed.rpartition(".")[0] + ".embed_positions"
    try:
        get_submodule(model, positions)
        out.append((Site(positions, 0, "learned positions"), total))
    except AttributeError:
        pass
    if tied:
        out.append((Site(arch.final_norm, len(layers_of(model)), "final norm"), 1.0 / total))
    return out


@contextmanager
def stream_scaled(model, at: dict[int, float]) -> Iterator[None]:
    """The reference the fold must equal: the stream entering pruned layer j multiplied by `at[j]` (hooks)."""
    layers = layers_of(model)

    def hook(factor):
        def pre(module, args, kwargs):
            if args:
                return (args[0] * factor, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * factor}
        return pre

    with ExitStack() as stack:
        for j, factor in at.items():
            stack.callback(layers[j].register_forward_pre_hook(hook(factor), with_kwargs=True).remove)
        yield


def tie_again(ctx: HealContext, embed: torch.nn.Module, head: torch.nn.Module) -> None:
    """Copy-on-write splits a tied head from the embeddings' copy: keep the base's original for the head too,
    and point the pruned model's head at the embeddings' (soon scaled) weight again."""
    ctx.protect(head, ["weight"])
    head._parameters["weight"] = embed._parameters["weight"]


@torch.no_grad()
def heal_rescale(ctx: HealContext, options: RescaleOptions) -> dict:
    start = time.perf_counter()
    method = "rescale"
    ctx.require_base(method)
    ctx.model.eval()
    refusal = fold_refusal(ctx.model)
    if refusal:
        raise UnsupportedModel(f"--heal {method}: {refusal}")
    removed, kept, num_before = ctx.removed_and_kept(method)
    if not removed:
        raise StageError(f"--heal {method}: no layers were removed")
    runs = [run for run in contiguous_runs(removed) if run[-1] + 1 < num_before]  # a trailing run: nothing to do
    record: dict = {"method": method, "steps": 0, "tokens": int(ctx.train_ids.numel()), "runs": []}
    scales = magnitude_scales(ctx, runs, options.batch_size) if runs else []
    at = {kept.index(run[-1] + 1): s for run, s in zip(runs, scales)}  # pruned layer reading the stream after a run
    n = len(layers_of(ctx.model))
    factors = [float(torch.tensor([s for j, s in at.items() if j > layer], dtype=torch.float64).prod()) for layer in range(n)]
    total = float(torch.tensor(scales, dtype=torch.float64).prod()) if scales else 1.0
    embed, head = ctx.model.get_input_embeddings(), ctx.model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    sites = scaled_sites(ctx.model, factors, total, tied) if runs else []
    probe = ctx.train_ids[:2, :32]
    with stream_scaled(ctx.model, at):
        want = ctx.model(input_ids=probe, use_cache=False).logits.double()
    with undo_unless_better(ctx, [site for site, _ in sites], options, record):
        if tied and sites:
            tie_again(ctx, embed, head)
        for site, factor in sites:
            for param in site.module(ctx.model).parameters(recurse=False):
                param.mul_(factor)
        got = ctx.model(input_ids=probe, use_cache=False).logits.double()
        error = float((got - want).norm() / want.norm().clamp_min(1e-12))
        limit = 1e-3 if next(ctx.model.parameters()).dtype == torch.float32 else 2e-2  # norm eps: not exact
        if error > limit:
            raise StageError(f"--heal {method}: folding the scales changed the result (relative error {error:.2e})")
    for run, s in zip(runs, scales):
        ctx.log(f"Magnitude compensation for removed layers {run[0]}-{run[-1]}: stream x {s:.4f}")
        record["runs"].append({"removed": run, "scale": round(s, 6), "reads": run[-1] + 1})
    record.update(
        seconds=round(time.perf_counter() - start, 3),
        options=options_record(options),
        fusion_error=error,
        tied_head=tied,
        losses=[],
    )
    return record
