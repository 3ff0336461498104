"""`tail`: the last kept layers and the final norm (and an untied output head) trained with KL to the unpruned model.

"Reassessing Layer Pruning" (Lu et al., 2024) found that training the head and the last few layers heals a
layer-pruned model better than LoRA. Here the layers before the tail stay frozen, so the stream entering the tail
is captured once from the pruned model, and the unpruned model's normalised final stream once from the base (as
`absorb` captures its activations); each step runs only the tail layers, the final norm and the head:

    loss = T² · KL(softmax(z_base / T) ‖ softmax(z / T)),  averaged over `positions` random positions per step,

with ``z_base`` the base model's logits (its normalised final stream through a frozen copy of the head) and ``z``
the pruned model's: the full next-token distribution, not a hidden-state MSE.

Tied heads (SmolLM2, Gemma, OPT): the head *is* the input embedding matrix, so training it would change the
embeddings too, and untying it would add vocabulary × hidden weights to the output (+28M, +21% for SmolLM2-135M).
A tied head is therefore not trained (the final norm is) and the output keeps its tied weights. An untied head
trains with the tail unless ``head=false``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_layerprune.architectures import get_architecture
from hf_layerprune.architectures.base import get_submodule
from hf_layerprune.runtime.errors import ConfigError, UnsupportedModel
from hf_layerprune.runtime.registry import option
from hf_layerprune.healing.absorb import stream_at
from hf_layerprune.healing.activations import capture, layers_of
from hf_layerprune.healing.base import CycledOptions, HealContext, options_record
from hf_layerprune.healing.compensation import Site, undo_unless_better
from hf_layerprune.healing.distill import kd_loss
from hf_layerprune.healing.replacement import run_layers
from hf_layerprune.healing.training import Rows, TrainSettings, kl_to_base, only_trainable, train

DEFAULT_TAIL_STEPS = 200


@dataclass
class TailOptions(CycledOptions):
    """layers: how many of the last kept layers train (with the final norm); head: also train an untied output
    head (a tied one never trains); temperature: softening T of both distributions; positions: the KL is taken at
    this many random positions of each sequence per step (None: every position; the head's product over the
    vocabulary dominates a step: 64 of 256 positions make a SmolLM2 step ~4x cheaper); samples: distinct healing
    sequences (cycled); steps default 200; learning_rate default 3e-4; keep_if_better: restore the tail when the
    held-out loss rose."""

    layers: int = option(2, at_least=1)
    head: bool = True
    temperature: float = option(1.0, above=0)
    positions: int | None = option(64, at_least=1)
    batch_size: int = option(8, at_least=1)
    weight_decay: float = option(0.0, at_least=0)
    max_grad_norm: float = option(1.0, above=0)
    keep_if_better: bool = True

    default_learning_rate = 3e-4  # a few hundred steps on two layers; absorb's layer-local MSE uses 1e-3
    default_steps = DEFAULT_TAIL_STEPS


class TailKL(torch.nn.Module):
    """Loss module: tail layers `indices` on the captured stream, final norm, head; KL to the teacher's logits."""

    def __init__(self, model, indices: list[int], norm, head, temperature: float, positions: int | None) -> None:
        super().__init__()
        self.model, self.indices, self.norm, self.head = model, indices, norm, head
        self.teacher_head = [None if p is None else p.detach().clone() for p in (head.weight, head.bias)]  # frozen
        self.temperature, self.positions = temperature, positions

    def forward(self, input_ids: torch.Tensor, tail_input: torch.Tensor, teacher_final: torch.Tensor) -> dict:
        hidden = run_layers(self.model, self.indices, input_ids, tail_input)
        if self.positions and self.positions < hidden.shape[1]:  # the same random positions for the whole batch
            chosen = torch.randperm(hidden.shape[1])[: self.positions].to(hidden.device)
            hidden, teacher_final = hidden[:, chosen], teacher_final[:, chosen.to(teacher_final.device)]
        logits = self.head(self.norm(hidden))
        with torch.no_grad():
            target = F.linear(teacher_final.to(logits.dtype), *self.teacher_head)
        return {"loss": kd_loss(logits, target, self.temperature)}


def module_path(model, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


@torch.no_grad()
def check_logits_path(model, norm, head, ids: torch.Tensor) -> None:
    """Refuse models whose logits are not head(final_norm(last stream)) (a projection or a softcap in between)."""
    probe = ids[:1, : min(ids.shape[1], 16)]
    n = len(layers_of(model))
    stream = capture(model, probe, points=[n])["points"][n]
    want = model(input_ids=probe, use_cache=False).logits
    if not torch.allclose(head(norm(stream)), want, rtol=1e-3, atol=1e-4):
        raise UnsupportedModel(f"--heal tail: {model.config.model_type}'s logits are not head(final norm(stream)); use distill")


@torch.no_grad()
def teacher_final(ctx: HealContext, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The unpruned model's final stream after its final norm, on CPU."""
    out = []
    with ctx.as_base() as base:
        arch = get_architecture(base.config)
        n = len(layers_of(base))
        norm = get_submodule(base, arch.final_norm)
        for start in range(0, len(ids), batch_size):
            out.append(norm(capture(base, ids[start : start + batch_size], points=[n])["points"][n]).cpu())
    return torch.cat(out)


def heal_tail(ctx: HealContext, options: TailOptions) -> dict:
    start = time.perf_counter()
    ctx.require_base("tail")
    model = ctx.model
    arch = get_architecture(model.config)
    n = len(layers_of(model))
    if options.layers > n:
        raise ConfigError(f"--heal tail:layers={options.layers} but the pruned model has {n} layers")
    norm, head, embed = get_submodule(model, arch.final_norm), model.get_output_embeddings(), model.get_input_embeddings()
    tied = head.weight is embed.weight
    check_logits_path(model, norm, head, ctx.train_ids)
    indices = list(range(n - options.layers, n))
    seq_len = ctx.train_ids.shape[1]
    train_ids = ctx.train_ids[: options.training_samples(seq_len)]
    chunk = max(1, options.batch_size)
    trains_head = options.head and not tied
    sites = [Site(f"{arch.layers}.{j}", j, f"layer {j}") for j in indices] + [Site(arch.final_norm, n, "final norm")]
    if trains_head:
        sites.append(Site(module_path(model, head), n, "output head"))
    ctx.log(f"Training the last {options.layers} layer(s), the final norm{' and the head' if trains_head else ''} "
            f"with KL to the unpruned model{' (tied head: not trained)' if tied else ''}")
    record: dict = {"method": "tail", "learning_rate": options.lr(), "layers": indices, "tied_head": tied,
                    "head_trained": trains_head, "kl_before": kl_to_base(model, ctx.base_model, ctx.eval_ids)}
    dataset = Rows(input_ids=train_ids, tail_input=stream_at(model, train_ids, indices[0], chunk),
                   teacher_final=teacher_final(ctx, train_ids, chunk))
    with undo_unless_better(ctx, sites, options, record):
        norm, head = get_submodule(model, arch.final_norm), model.get_output_embeddings()  # copies after protect
        params = [p for j in indices for p in layers_of(model)[j].parameters()] + list(norm.parameters())
        params += list(head.parameters()) if trains_head else []
        settings = TrainSettings(steps=options.step_cap(seq_len), batch_size=options.batch_size,
                                 learning_rate=options.lr(), seed=options.seed, weight_decay=options.weight_decay,
                                 max_grad_norm=options.max_grad_norm, progress=options.progress,
                                 budget_s=options.budget_seconds())
        with only_trainable(model, params):
            run = train(TailKL(model, indices, norm, head, options.temperature, options.positions), dataset, settings)
    del dataset
    tokens = run["steps"] * options.batch_size * seq_len
    record.update(
        steps=run["steps"],
        tokens=tokens,
        samples=len(train_ids),
        trainable_parameters=sum(p.numel() for p in params),
        kl_after=kl_to_base(model, ctx.base_model, ctx.eval_ids),
        seconds=round(time.perf_counter() - start, 3),
        tokens_per_second=round(tokens / max(run["seconds"], 1e-9), 2),
        options=options_record(options),
        losses=run["losses"],
    )
    return record
