"""`distill`: the pruned model trained to match the unpruned model's next-token distribution.

loss = alpha · T² · KL(p_teacher^T ‖ p_student^T) + (1 − alpha) · LM loss, per token (forward KL, as Minitron;
T = temperature), plus with ``hidden=W`` W times the intermediate-state loss: the mean over the pruned model's
residual-stream points of the per-token relative squared error ‖h_s − h_t‖² / ‖h_t‖² against the unpruned model's
stream where the same kept layer reads it (Minitron adds such a term when depth is cut deeply). The teacher is
`base_model` as given (bf16/fp32), or with ``teacher=4bit`` a 4-bit NF4 copy of it (CUDA + bitsandbytes) to save
memory.

What trains (``adapter``): ``lora`` (default) a LoRA adapter, merged into the pruned model's weights like `lora`;
``full`` every weight of the pruned model except the input embeddings and the output head (tied on many small
models; the vocabulary stays the teacher's), as Minitron and Sheared-LLaMA heal.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_layerprune.surgery.base_view import SharedBase, as_base, protect
from hf_layerprune.runtime.errors import ConfigError, StageError
from hf_layerprune.healing.activations import layers_of, recording
from hf_layerprune.runtime.registry import option
from hf_layerprune.healing.base import HealContext
from hf_layerprune.healing.lora import (
    LoraOptions, check_qlora_available, merge_in_place, quantized_copy, run_training, train_adapter, training_record,
)
from hf_layerprune.healing.training import lm_loss, only_trainable


@dataclass
class DistillOptions(LoraOptions):
    """temperature: softening T of both distributions. alpha: weight of the KL term (1 − alpha on the LM loss).
    teacher: "base" (the unpruned model as loaded) or "4bit" (an NF4 copy of it; CUDA + bitsandbytes).
    adapter: "lora" (rank / targets as `lora`) or "full" (every weight but the embeddings and the head; its
    default learning rate is FULL_LEARNING_RATE, a third of the adapter's, as full-weight continued training uses).
    hidden: weight of the intermediate-state loss (0: logits only)."""

    temperature: float = option(1.0, above=0)
    alpha: float = option(1.0, at_least=0, at_most=1)
    teacher: str = option("base", one_of=("base", "4bit"))
    adapter: str = option("lora", one_of=("lora", "full"))
    hidden: float = option(0.0, at_least=0)

    def lr(self) -> float:
        if self.learning_rate is None and self.adapter == "full":
            return FULL_LEARNING_RATE
        return super().lr()


FULL_LEARNING_RATE = 1e-4
FULL_TARGETS = "all but embeddings and head"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over tokens, in fp32."""
    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, -2)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


def hidden_loss(student_points: list[torch.Tensor], teacher_points: list[torch.Tensor]) -> torch.Tensor:
    """Mean over points and tokens of ‖s − t‖² / ‖t‖² (per token, so that a few huge-norm tokens do not dominate)."""
    terms = [((s.float() - t.float()).pow(2).sum(-1) / t.float().pow(2).sum(-1).clamp_min(1e-6)).mean()
             for s, t in zip(student_points, teacher_points)]
    return torch.stack(terms).mean()


def point_pairs(kept: list[int], num_layers_before: int) -> list[tuple[int, int]]:
    """(student point, teacher point): the input of student layer j (j ≥ 1) against the input base layer kept[j]
    had, and the student's last output against the base model's (points as in `activations`)."""
    return [(j, kept[j]) for j in range(1, len(kept))] + [(len(kept), num_layers_before)]


class DistillLoss(torch.nn.Module):
    """The student (a peft model or the pruned model) and a frozen teacher; forward returns the mixed loss.
    With `hidden` > 0, `pairs` (point_pairs) and `student_model` (the unwrapped pruned model) are needed."""

    def __init__(self, student, teacher, temperature: float, alpha: float, hidden: float = 0.0,
                 pairs: list[tuple[int, int]] = (), student_model=None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.hidden = hidden
        self.pairs = list(pairs) if hidden else []
        self.student_model = student_model if student_model is not None else student

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), as_base(self.teacher) as teacher, recording(teacher, [t for _, t in self.pairs]) as teacher_stream:
            teacher_logits = teacher(input_ids=input_ids, use_cache=False).logits
        labels = input_ids if self.alpha < 1 else None
        with recording(self.student_model, [s for s, _ in self.pairs], detach=False) as student_stream:
            out = self.student(input_ids=input_ids, labels=labels, use_cache=False)
        loss = kd_loss(out.logits, teacher_logits, self.temperature)
        if labels is not None:
            loss = self.alpha * loss + (1 - self.alpha) * out.loss
        if self.pairs:
            loss = loss + self.hidden * hidden_loss([student_stream[s] for s, _ in self.pairs],
                                                    [teacher_stream[t].to(student_stream[s].device) for s, t in self.pairs])
        return {"loss": loss}


def heal_distill(ctx: HealContext, options: DistillOptions) -> dict:
    start = time.perf_counter()
    pairs = []
    if options.hidden:
        _, kept, before = ctx.removed_and_kept("distill:hidden")
        depth = len(layers_of(ctx.model))
        if len(kept) != depth:
            raise StageError(f"--heal distill:hidden: the report keeps {len(kept)} layers but the model has {depth}")
        pairs = point_pairs(kept, before)
    teacher = ctx.require_base("distill")  # a SharedBase view (run as base per forward) or a separate model
    if options.teacher == "4bit":
        check_qlora_available("distill:teacher=4bit")
        with ctx.as_base() as base:
            teacher = quantized_copy(base)
    shared = isinstance(teacher, SharedBase)
    if not shared:
        teacher.eval()
    loss_before = lm_loss(ctx.model, ctx.eval_ids)
    before = eval_distill(ctx.model, teacher, ctx.eval_ids, options.temperature, pairs)
    loss = lambda student: DistillLoss(student, teacher, options.temperature, options.alpha,  # noqa: E731
                                       options.hidden, pairs, student_model=ctx.model)
    with nullcontext() if shared else only_trainable(teacher, []):
        if options.adapter == "full":
            config, params = None, full_parameters(ctx.model, teacher, ctx)
            full = {"trainable_parameters": sum(p.numel() for p in params)}
            with only_trainable(ctx.model, params):
                run = run_training(ctx, options, "distill", f"{full['trainable_parameters'] / 1e6:.1f}M weights "
                                   f"({FULL_TARGETS})", ctx.model, loss(ctx.model))
        else:
            run, _, config, peft_model = train_adapter(ctx, options, "distill", loss=loss)
            merge_in_place(ctx, peft_model)
            full = {}
    record = training_record("distill", options, config, run, ctx, time.perf_counter() - start,
                             targets=[FULL_TARGETS] if full else None)
    after = eval_distill(ctx.model, teacher, ctx.eval_ids, options.temperature, pairs)
    record.update(
        **full,
        temperature=options.temperature,
        alpha=options.alpha,
        teacher=options.teacher,
        adapter=options.adapter,
        hidden=options.hidden,
        **({"hidden_before": before["hidden"], "hidden_after": after["hidden"]} if pairs else {}),
        loss_before=loss_before,
        loss_after=lm_loss(ctx.model, ctx.eval_ids),
        kd_before=before["kd"],
        kd_after=after["kd"],
    )
    return record


def full_parameters(model, teacher, ctx: HealContext | None = None) -> list[torch.nn.Parameter]:
    """Every parameter of `model` but those of the input embeddings and the output head (one tensor when tied).
    With a `SharedBase` teacher they are first protected (copy-on-write: the teacher keeps the originals)."""
    ends = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    frozen = {id(p) for m in ends for p in m.parameters()}
    if isinstance(teacher, SharedBase):
        for module in model.modules():
            names = [n for n, p in module._parameters.items() if p is not None and id(p) not in frozen]
            if names:
                protect(teacher, module, names)
        return [p for p in model.parameters() if id(p) not in frozen]
    params = [p for p in model.parameters() if id(p) not in frozen]
    if {id(p) for p in params} & {id(p) for p in teacher.parameters()}:
        raise ConfigError("--heal distill:adapter=full: the pruned model shares weights with the teacher; heal a copy")
    return params


@torch.no_grad()
def eval_distill(student, teacher, ids: torch.Tensor, temperature: float, pairs: list[tuple[int, int]] = (),
                 batch_size: int = 4) -> dict[str, float]:
    """{"kd": mean per-token KL(teacher ‖ student) on `ids`, and with `pairs` "hidden": the mean `hidden_loss`},
    from one forward of each model per batch."""
    totals = {"kd": 0.0, "hidden": 0.0} if pairs else {"kd": 0.0}
    device = next(student.parameters()).device
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size].to(device)
        with recording(student, [s for s, _ in pairs]) as s_points:
            s = student(input_ids=batch, use_cache=False).logits
        with as_base(teacher) as base, recording(base, [t for _, t in pairs]) as t_points:
            t = base(input_ids=batch.to(next(base.parameters()).device), use_cache=False).logits.to(s.device)
        totals["kd"] += float(kd_loss(s, t, temperature)) * len(batch)
        if pairs:
            totals["hidden"] += float(hidden_loss([s_points[i] for i, _ in pairs],
                                                  [t_points[j].to(device) for _, j in pairs])) * len(batch)
    return {k: round(v / max(len(ids), 1), 6) for k, v in totals.items()}
