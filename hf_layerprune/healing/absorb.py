"""`absorb`: the kept layer(s) next to each removed block are trained to do the block's job as well as their own.

LLM-Streamline replaces a removed block by one *new* layer, which gives the model one layer back (`replace`).
`absorb` keeps the requested depth instead: for a removed run of base layers ``a..b`` it trains the ``layers``
kept layers just before it (default 2: ``a − 2, a − 1``; the ones after it when the run starts at layer 0) so
that, on their input, they produce the base model's stream after the run (base point ``b + 1``). With
``layers=1`` and one contiguous run this is exactly LLM-Streamline's replacement of the ``n + 1`` layers
``a − 1..b`` by one layer initialised from layer ``a − 1`` — at the depth ``--drop n`` asks for — and it works
for any selection (bi's scattered layers too): runs are healed one after another, left to right, each on the input
the already-healed pruned model gives it (so an earlier run's residual error is corrected downstream) against
the base model's output.

Training (the Trainer, only that layer's parameters, layer called exactly as the stock forward calls it):
MSE between the layer's output and the captured target (the paper's loss), AdamW with cosine decay. The
training text is `samples` sequences, seen for as many epochs as ``steps × batch_size`` needs: the layer-local
loss is cheap (one layer's forward and backward per step), so the budget is bounded by the healing text (for
`self`, sampled from the base model). With `keep_if_better` the layer is restored when the held-out LM loss rose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hf_layerprune.architectures import get_architecture
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.healing.activations import iter_capture, layers_of
from hf_layerprune.runtime.registry import option
from hf_layerprune.healing.base import CycledOptions, HealContext, contiguous_runs, options_record
from hf_layerprune.healing.compensation import Site, undo_unless_better
from hf_layerprune.healing.replacement import BlockMSE, layer_mse
from hf_layerprune.healing.training import Rows, TrainSettings, only_trainable, train

DEFAULT_ABSORB_STEPS = 200


@dataclass
class AbsorbOptions(CycledOptions):
    """steps: optimizer steps per removed run (default 200); samples: distinct healing sequences (cycled for
    epochs; None: steps x batch_size); layers: how many kept layers absorb each run (trained jointly);
    learning_rate default 1e-3; weight_decay / max_grad_norm as LLM-Streamline;
    keep_if_better: restore a layer whose training raised the held-out loss."""

    batch_size: int = option(8, at_least=1)
    layers: int = option(2, at_least=1)
    side: str = option("before", one_of=("before", "both"))
    weight_decay: float = option(1e-3, at_least=0)
    max_grad_norm: float = option(5.0, above=0)
    keep_if_better: bool = True

    default_learning_rate = 1e-3
    default_steps = DEFAULT_ABSORB_STEPS


@dataclass(frozen=True)
class Span:
    """Removed base layers `run`, absorbed by the consecutive kept base layers `layers`; target: base point `end`."""

    run: list[int]
    layers: list[int]
    end: int


def spans(removed: list[int], num_layers: int, width: int = 1) -> list[Span]:
    """Per removed run: up to `width` kept layers right before it (after it for a run that starts at layer 0).
    Layers are never shared: a run right after a leading run's absorbers is absorbed by them too."""
    out: list[Span] = []
    runs = contiguous_runs(removed)
    for k, run in enumerate(runs):
        if run[0] == 0:
            following = runs[k + 1][0] if k + 1 < len(runs) else num_layers
            layers = list(range(run[-1] + 1, min(run[-1] + 1 + width, following)))
            if not layers:
                raise ConfigError("--heal absorb needs at least one kept layer")
            out.append(Span(run, layers, layers[-1] + 1))
            continue
        used = max(out[-1].end - 1, out[-1].layers[-1]) if out else -1
        layers = list(range(max(used + 1, run[0] - width), run[0]))
        if layers:
            out.append(Span(run, layers, run[-1] + 1))
        else:  # the kept layers before it already absorb the previous run
            out[-1] = Span(out[-1].run + run, out[-1].layers, run[-1] + 1)
    return out


def with_after(plan: list[Span], removed: list[int], num_layers: int, width: int) -> list[Span]:
    """`side=both`: each span also takes up to `width` kept layers right after its run (never the next span's);
    its target moves to the base stream after the last of them."""
    out = []
    for k, span in enumerate(plan):
        limit = plan[k + 1].layers[0] if k + 1 < len(plan) else num_layers
        after = []
        while span.end + len(after) < limit and len(after) < width and span.end + len(after) not in removed:
            after.append(span.end + len(after))
        out.append(Span(span.run, span.layers + after, after[-1] + 1 if after else span.end))
    return out


@torch.no_grad()
def stream_at(model, ids: torch.Tensor, point: int, batch_size: int) -> torch.Tensor:
    """Residual stream at `point` for `ids`, on CPU."""
    return torch.cat([got["points"][point].cpu() for _, got in iter_capture(model, ids, batch_size, points=[point])])


def heal_absorb(ctx: HealContext, options: AbsorbOptions) -> dict:
    start = time.perf_counter()
    ctx.require_base("absorb")
    removed, kept, num_before = ctx.removed_and_kept("absorb")
    if not removed:
        raise ConfigError("--heal absorb: no layers were removed")
    arch = get_architecture(ctx.model.config)
    seq_len = ctx.train_ids.shape[1]
    steps = options.step_cap(seq_len)
    train_ids = ctx.train_ids[: options.training_samples(seq_len)]
    chunk = max(1, options.batch_size)
    plan = spans(removed, num_before, options.layers)
    if options.side == "both":
        plan = with_after(plan, removed, num_before, options.layers)
    sites = [Site(f"{arch.layers}.{kept.index(i)}", 0, f"layer {i}") for s in plan for i in s.layers]
    budget = options.budget_seconds()
    record: dict = {"method": "absorb", "steps": 0, "learning_rate": options.lr(), "runs": []}
    losses: list[float] = []
    train_seconds = 0.0
    with undo_unless_better(ctx, sites, options, record):
        for span in plan:
            indices = [kept.index(i) for i in span.layers]
            names = ", ".join(map(str, span.layers))
            ctx.log(f"Training layer(s) {names} to absorb removed layers {', '.join(map(str, span.run))}")
            point = indices[0]  # the first trained layer's input in the pruned model
            eval_in = stream_at(ctx.model, ctx.eval_ids, point, chunk)
            with ctx.as_base() as base:
                eval_out = stream_at(base, ctx.eval_ids, span.end, chunk)
                train_out = stream_at(base, train_ids, span.end, chunk)
            mse_before = layer_mse(ctx.model, indices, ctx.eval_ids, eval_in, eval_out)
            dataset = Rows(input_ids=train_ids, block_input=stream_at(ctx.model, train_ids, point, chunk),
                           block_target=train_out)
            params = [p for i in indices for p in layers_of(ctx.model)[i].parameters()]
            settings = TrainSettings(steps=steps, batch_size=options.batch_size, learning_rate=options.lr(),
                                     seed=options.seed, weight_decay=options.weight_decay,
                                     max_grad_norm=options.max_grad_norm, progress=options.progress,
                                     budget_s=budget / len(plan) if budget else None)  # the runs share a budget
            with only_trainable(ctx.model, params):
                run = train(BlockMSE(ctx.model, indices), dataset, settings)
            record["steps"] += run["steps"]
            del dataset
            train_seconds += run["seconds"]
            losses += run["losses"]
            record["runs"].append({"removed": span.run, "layers": span.layers, "block_mse_before": mse_before,
                                   "block_mse_after": layer_mse(ctx.model, indices, ctx.eval_ids, eval_in, eval_out)})
    tokens = record["steps"] * options.batch_size * seq_len
    record.update(
        tokens=tokens,
        samples=len(train_ids),
        seconds=round(time.perf_counter() - start, 3),
        tokens_per_second=round(tokens / max(train_seconds, 1e-9), 2),
        options={k: v for k, v in options_record(options).items() if k != "side" or v != "before"},  # as before side=
        losses=losses,
    )
    return record
