"""Shared training plumbing: one transformers `Trainer` run for every trained healer, and LM-loss evaluation.

Each trained healer wraps what it trains in a small module whose ``forward(**batch)`` returns ``{"loss": ...}``
(LM loss, KL to a teacher, or MSE to captured hidden states), so the stock Trainer runs it unchanged and
``accelerate launch hf-layerprune ...`` gives DDP / FSDP / DeepSpeed. Per-step losses come from the Trainer's
log history (``logging_steps=1``).
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from hf_layerprune import distributed, progress


class Rows(torch.utils.data.Dataset):
    """A dataset of equal-length tensors: row i is {name: tensor[i]} (input_ids, captured hidden states...)."""

    def __init__(self, **columns: torch.Tensor) -> None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths: {lengths}")
        self.columns = columns
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


class LMLoss(torch.nn.Module):
    """Next-token cross-entropy of `model` on its input ids (labels = inputs, as for causal-LM pretraining)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss}


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    warmup: float = 0.05  # fraction of steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    scheduler: str = "cosine"
    bf16: bool | None = None  # None: on CUDA when supported
    optim: str = "adamw_torch"
    progress: bool = False


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def train(module: torch.nn.Module, dataset: torch.utils.data.Dataset, settings: TrainSettings) -> dict[str, Any]:
    """Train the parameters of `module` that require grad with the transformers Trainer.

    Returns {"steps", "losses", "seconds", "samples_per_second"}. The module is left in eval mode."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    on_cpu = model_device(module).type == "cpu"
    bf16 = settings.bf16
    if bf16 is None:
        bf16 = (not on_cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    quiet = not settings.progress or progress.active()  # a display shows our own bar instead of the Trainer's
    per_device = distributed.per_device_batch(settings.batch_size)  # several processes share each step's batch
    with tempfile.TemporaryDirectory(prefix="hf-layerprune-heal-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=settings.steps,
            per_device_train_batch_size=per_device,
            learning_rate=settings.learning_rate,
            lr_scheduler_type=settings.scheduler,
            warmup_steps=settings.warmup,
            weight_decay=settings.weight_decay,
            max_grad_norm=settings.max_grad_norm,
            optim=settings.optim,
            bf16=bf16,
            logging_steps=1,
            logging_strategy="steps",
            save_strategy="no",
            report_to=[],
            seed=settings.seed,
            data_seed=settings.seed,
            use_cpu=on_cpu,
            disable_tqdm=quiet,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=module, args=args, train_dataset=dataset, callbacks=[_StepsToDisplay(settings.steps)])
        if quiet:
            trainer.remove_callback(PrinterCallback)  # quiet: the losses are in the record, steps on our display
        start = time.perf_counter()
        trainer.train()
        distributed.gather_trained(trainer, module)  # FSDP / DeepSpeed shards: the full trained weights, once
        seconds = time.perf_counter() - start
        history = trainer.state.log_history
        del trainer
    module.eval()
    losses = [round(float(h["loss"]), 6) for h in history if "loss" in h]
    return {"steps": settings.steps, "losses": losses, "seconds": round(seconds, 3),
            "samples_per_second": round(settings.steps * settings.batch_size / max(seconds, 1e-9), 3),
            **({"world_size": distributed.world().size, "per_device_batch_size": per_device}
               if distributed.is_distributed() else {})}


class _StepsToDisplay(TrainerCallback):
    """The Trainer's steps and current loss as a bar of the run's display (progress.py); nothing without one."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.bar = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress.task("training", total=self.steps, unit="steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = round(float(logs["loss"]), 4)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.advance(1, **({"loss": self.loss} if self.loss is not None else {}))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.done()


@contextmanager
def only_trainable(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Freeze every parameter of `model` except `params`; restore the flags afterwards."""
    saved = {p: p.requires_grad for p in model.parameters()}
    keep = {id(p) for p in params}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


@contextmanager
def gradient_checkpointing(model, enabled: bool) -> Iterator[None]:
    """Activation checkpointing on the HF model for the duration (non-reentrant: frozen inputs are fine)."""
    if not enabled or not getattr(model, "supports_gradient_checkpointing", False):
        yield
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.gradient_checkpointing_disable()


@torch.no_grad()
def lm_loss(model, ids: torch.Tensor, batch_size: int = 1) -> float:
    """Mean next-token negative log-likelihood of `ids` (per predicted token), in fp32.

    One sequence at a time by default: the fp32 logits of a batch (batch x seq_len x vocab) would otherwise set the
    healer's peak memory (measured: +0.24 GiB over plain peft for 4 x 256 tokens and a 32k vocabulary)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    try:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return round(total / max(count, 1), 6)


@torch.no_grad()
def kl_to_base(model, base, ids: torch.Tensor, batch_size: int = 1) -> float:
    """Mean KL(base ‖ model) of the next-token distributions over every position of `ids`, in fp32 (nats per
    token). `base`: a SharedBase view over `model` (run as base per batch) or a separate unpruned model."""
    from hf_layerprune.base_view import as_base

    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    try:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size].to(device)
            with as_base(base) as teacher:
                target = F.log_softmax(teacher(input_ids=batch, use_cache=False).logits.float(), dim=-1)
            pred = F.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
            total += float(F.kl_div(pred, target, log_target=True, reduction="sum"))
            count += batch.numel()
    finally:
        model.train(was_training)
    return round(total / max(count, 1), 6)


def perplexity(loss: float) -> float:
    return round(math.exp(loss), 4) if loss < 50 else float("inf")
