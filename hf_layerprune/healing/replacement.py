"""`replace` (LLM-Streamline): the n removed consecutive layers become one decoder layer, initialised from the
first of them and trained to do the block's job.

The result is the stock architecture with L − n + 1 layers: exactly the base model minus the block's layers
after the first, i.e. surgery's removal of n − 1 layers. The pipeline has already cut all n, so the first one is
put back from `base_model` at its place, ``layer_idx`` renumbered and the per-layer config fields rewritten by
``surgery.config_updates`` for the new kept list; the run's report is updated (removed_layers, kept_layers,
num_layers_after, parameters_after).

Training (the Trainer, only the new layer's parameters):
- ``mode=mse`` (default, the paper's): block input ``h_a`` and output ``h_{b+1}`` are captured from the base
  model (hooks, pre-final-norm) and the layer learns ``h_a ↦ h_{b+1}`` with MSE. It is called exactly as the
  stock forward calls it (same position embeddings and masks, see ``activations.layer_call``).
- ``mode=lm``: the LM loss of the whole pruned model, training only the new layer (the README's better mode).
Defaults follow the paper's code: AdamW lr 2e-4 cosine, weight decay 1e-3, grad clip 5.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_layerprune.architectures import get_architecture
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.healing.activations import capture, layer_call, layers_of
from hf_layerprune.runtime.registry import option
from hf_layerprune.healing.base import HealContext, HealOptions, contiguous_runs, options_record
from hf_layerprune.healing.training import LMLoss, Rows, TrainSettings, lm_loss, only_trainable, train
from hf_layerprune.surgery.layers import config_updates


@dataclass
class ReplaceOptions(HealOptions):
    """mode: "mse" (map the captured block input to its output) or "lm" (LM loss through the whole model).
    weight_decay / max_grad_norm / learning_rate (default 2e-4): as LLM-Streamline."""

    mode: str = option("mse", one_of=("mse", "lm"))
    weight_decay: float = option(1e-3, at_least=0)
    max_grad_norm: float = option(5.0, above=0)

    default_learning_rate = 2e-4


def run_layers(model, indices: int | list[int], ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Decoder layer(s) `indices` (one, or consecutive) of `model` on stream `hidden`, each called as the stock
    forward calls it."""
    layers = layers_of(model)
    for index in [indices] if isinstance(indices, int) else indices:
        args, kwargs = layer_call(model, index, ids)
        hidden = layers[index](hidden, *args, **kwargs)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


class BlockMSE(torch.nn.Module):
    """Loss module: decoder layer(s) `index` of `model` on the captured block input vs the captured block output."""

    def __init__(self, model, index: int | list[int]) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, input_ids: torch.Tensor, block_input: torch.Tensor, block_target: torch.Tensor) -> dict:
        out = run_layers(self.model, self.index, input_ids, block_input)
        return {"loss": F.mse_loss(out.float(), block_target.float())}


def check_block(removed: list[int]) -> list[int]:
    runs = contiguous_runs(removed)
    if len(runs) != 1:
        raise ConfigError(
            f"--heal replace needs one contiguous block of removed layers (got {removed}); use --selection contiguous"
        )
    if len(removed) < 2:
        raise ConfigError("--heal replace replaces n >= 2 removed layers by one; with one removed layer use lora or linear")
    return runs[0]


def put_back(ctx: HealContext, first: int) -> int:
    """Insert a copy of base layer `first` into the pruned model at its place; return its new index."""
    model = ctx.model
    removed, kept, num_before = ctx.removed_and_kept("replace")
    new_kept = sorted(kept + [first])
    index = new_kept.index(first)
    arch = get_architecture(model.config)
    param = next(model.parameters())
    with ctx.as_base() as base:
        layer = copy.deepcopy(layers_of(base)[first]).to(device=param.device, dtype=param.dtype)
        updates = config_updates(base.config, new_kept)
    layers = list(arch.get_layers(model))
    layers.insert(index, layer)
    arch.set_layers(model, torch.nn.ModuleList(layers))
    for new_idx, each in enumerate(layers):
        for module in each.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    for module in layer.modules():  # the copy points at a copy of the base config; share the model's
        if hasattr(module, "config") and type(module.config) is type(model.config):
            module.config = model.config
    model.config.num_hidden_layers = updates["num_hidden_layers"]
    for key, value in updates.items():
        setattr(model.config, key, value)
    if hasattr(model.config, "validate"):
        model.config.validate()
    ctx.cut = dataclasses.replace(  # a new cut section: the heal stage returns it
        ctx.cut, removed_layers=[i for i in removed if i != first], kept_layers=new_kept,
        num_layers_after=len(new_kept), parameters_after=sum(p.numel() for p in model.parameters()),
    )
    return index


@torch.no_grad()
def block_io(base_model, ids: torch.Tensor, block: list[int], batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's block input (point a) and output (point b + 1) for `ids`, on CPU."""
    from hf_layerprune.surgery.base_view import as_base

    a, b = block[0], block[-1] + 1
    ins, outs = [], []
    for start in range(0, len(ids), batch_size):
        with as_base(base_model) as base:
            got = capture(base, ids[start : start + batch_size], points=[a, b])["points"]
        ins.append(got[a].cpu())
        outs.append(got[b].cpu())
    return torch.cat(ins), torch.cat(outs)


@torch.no_grad()
def layer_mse(model, index: int | list[int], ids: torch.Tensor, block_input: torch.Tensor, block_target: torch.Tensor) -> float:
    device = next(model.parameters()).device
    out = run_layers(model, index, ids.to(device), block_input.to(device))
    return round(float(F.mse_loss(out.float(), block_target.to(device).float())), 8)


def heal_replace(ctx: HealContext, options: ReplaceOptions) -> dict:
    start = time.perf_counter()
    ctx.require_base("replace")
    removed, _, _ = ctx.removed_and_kept("replace")
    block = check_block(removed)
    eval_in, eval_out = block_io(ctx.base_model, ctx.eval_ids, block)
    loss_before = lm_loss(ctx.model, ctx.eval_ids)
    mse_skip = round(float(F.mse_loss(eval_in.float(), eval_out.float())), 8)  # the pruned model: identity
    index = put_back(ctx, block[0])
    ctx.log(f"Replacing layers {block[0]}-{block[-1]} by one layer (initialised from layer {block[0]}) at index {index}")
    mse_init = layer_mse(ctx.model, index, ctx.eval_ids, eval_in, eval_out)
    layer = layers_of(ctx.model)[index]
    seq_len = ctx.train_ids.shape[1]
    steps = options.step_cap(seq_len)
    settings = TrainSettings(steps=steps, batch_size=options.batch_size, learning_rate=options.lr(), seed=options.seed,
                             weight_decay=options.weight_decay, max_grad_norm=options.max_grad_norm,
                             progress=options.progress, budget_s=options.budget_seconds())
    with only_trainable(ctx.model, list(layer.parameters())):
        if options.mode == "mse":
            train_in, train_out = block_io(ctx.base_model, ctx.train_ids, block)
            dataset = Rows(input_ids=ctx.train_ids, block_input=train_in, block_target=train_out)
            run = train(BlockMSE(ctx.model, index), dataset, settings)
        else:
            run = train(LMLoss(ctx.model), Rows(input_ids=ctx.train_ids), settings)
    steps = run["steps"]
    tokens = steps * options.batch_size * seq_len
    return {
        "method": "replace",
        "mode": options.mode,
        "steps": steps,
        "tokens": tokens,
        "seconds": round(time.perf_counter() - start, 3),
        "tokens_per_second": round(tokens / max(run["seconds"], 1e-9), 2),
        "learning_rate": options.lr(),
        "options": options_record(options),
        "replaced": {"layers": block, "initialised_from": block[0], "index": index,
                     "trainable_parameters": sum(p.numel() for p in layer.parameters())},
        "losses": run["losses"],
        "loss_before": loss_before,
        "loss_after": lm_loss(ctx.model, ctx.eval_ids),
        "block_mse_before": mse_skip,
        "block_mse_init": mse_init,
        "block_mse_after": layer_mse(ctx.model, index, ctx.eval_ids, eval_in, eval_out),
    }
