"""`distill`: LoRA on the pruned model trained to match the unpruned model's next-token distribution.

loss = alpha · T² · KL(p_teacher^T ‖ p_student^T) + (1 − alpha) · LM loss, per token (forward KL, as Minitron;
T = temperature). The teacher is `base_model` as given (bf16/fp32), or with ``teacher=4bit`` a 4-bit NF4 copy of
it (CUDA + bitsandbytes) to save memory. The adapter is merged into the pruned model's weights like `lora`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_layerprune.errors import LayerPruneError
from hf_layerprune.healing.base import HealContext
from hf_layerprune.healing.lora import LoraOptions, check_qlora_available, quantized_copy, train_adapter, training_record
from hf_layerprune.healing.training import lm_loss, only_trainable


@dataclass
class DistillOptions(LoraOptions):
    """temperature: softening T of both distributions. alpha: weight of the KL term (1 − alpha on the LM loss).
    teacher: "base" (the unpruned model as loaded) or "4bit" (an NF4 copy of it; CUDA + bitsandbytes)."""

    temperature: float = 1.0
    alpha: float = 1.0
    teacher: str = "base"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over tokens, in fp32."""
    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, -2)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


class DistillLoss(torch.nn.Module):
    """The student (a peft model) and a frozen teacher; forward returns the mixed KD/LM loss."""

    def __init__(self, student, teacher, temperature: float, alpha: float) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=input_ids, use_cache=False).logits
        labels = input_ids if self.alpha < 1 else None
        out = self.student(input_ids=input_ids, labels=labels, use_cache=False)
        loss = kd_loss(out.logits, teacher_logits, self.temperature)
        if labels is not None:
            loss = self.alpha * loss + (1 - self.alpha) * out.loss
        return {"loss": loss}


def heal_distill(ctx: HealContext, options: DistillOptions) -> dict:
    start = time.perf_counter()
    if not 0 <= options.alpha <= 1 or options.temperature <= 0:
        raise LayerPruneError(f"--heal distill needs 0 <= alpha <= 1 and temperature > 0 (got {options.alpha}, {options.temperature})")
    if options.teacher not in ("base", "4bit"):
        raise LayerPruneError(f"--heal distill:teacher={options.teacher!r}; use base or 4bit")
    teacher = ctx.require_base("distill")
    if options.teacher == "4bit":
        check_qlora_available("distill:teacher=4bit")
        teacher = quantized_copy(teacher)
    teacher.eval()
    loss_before = lm_loss(ctx.model, ctx.eval_ids)
    kd_before = eval_kd(ctx.model, teacher, ctx.eval_ids, options.temperature)
    with only_trainable(teacher, []):
        run, _, config, peft_model = train_adapter(
            ctx, options, "distill", loss=lambda student: DistillLoss(student, teacher, options.temperature, options.alpha)
        )
    peft_model.merge_and_unload()
    record = training_record("distill", options, config, run, ctx, time.perf_counter() - start)
    record.update(
        temperature=options.temperature,
        alpha=options.alpha,
        teacher=options.teacher,
        loss_before=loss_before,
        loss_after=lm_loss(ctx.model, ctx.eval_ids),
        kd_before=kd_before,
        kd_after=eval_kd(ctx.model, teacher, ctx.eval_ids, options.temperature),
    )
    return record


@torch.no_grad()
def eval_kd(student, teacher, ids: torch.Tensor, temperature: float, batch_size: int = 4) -> float:
    """Mean per-token KL(teacher ‖ student) on `ids`."""
    total, count = 0.0, 0
    device = next(student.parameters()).device
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size].to(device)
        s = student(input_ids=batch, use_cache=False).logits
        t = teacher(input_ids=batch.to(next(teacher.parameters()).device), use_cache=False).logits.to(s.device)
        total += float(kd_loss(s, t, temperature)) * batch.numel()
        count += batch.numel()
    return round(total / max(count, 1), 6)
