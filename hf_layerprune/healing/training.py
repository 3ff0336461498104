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

from hf_layerprune.runtime import distributed, progress
from hf_layerprune.surgery.base_view import as_base


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
    budget_s: float | None = None  # wall-clock training time: the schedule runs over time, `steps` only caps it


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def train(module: torch.nn.Module, dataset: torch.utils.data.Dataset, settings: TrainSettings) -> dict[str, Any]:
    """Train the parameters of `module` that require grad with the transformers Trainer.

    Returns {"steps" (done), "losses", "seconds", "samples_per_second"} (and "budget_seconds" with a budget). The
    module is left in eval mode."""
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
            lr_scheduler_type="constant" if settings.budget_s else settings.scheduler,  # budget: _WallClock's
            warmup_steps=0 if settings.budget_s else settings.warmup,
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
        callbacks = [_StepsToDisplay(None if settings.budget_s else settings.steps)]
        if settings.budget_s:
            callbacks.append(_WallClock(settings.budget_s, settings.learning_rate, settings.warmup, settings.scheduler))
        trainer = Trainer(model=module, args=args, train_dataset=dataset, callbacks=callbacks)
        if quiet:
            trainer.remove_callback(PrinterCallback)  # quiet: the losses are in the record, steps on our display
        start = time.perf_counter()
        for callback in callbacks:  # the budget counts from here, the Trainer's own setup included
            if isinstance(callback, _WallClock):
                callback.start = start
        trainer.train()
        distributed.gather_trained(trainer, module)  # FSDP / DeepSpeed shards: the full trained weights, once
        seconds = time.perf_counter() - start
        history = trainer.state.log_history
        steps = trainer.state.global_step
        del trainer
    module.eval()
    losses = [round(float(h["loss"]), 6) for h in history if "loss" in h]
    return {"steps": steps, "losses": losses, "seconds": round(seconds, 3),
            "samples_per_second": round(steps * settings.batch_size / max(seconds, 1e-9), 3),
            **({"budget_seconds": settings.budget_s} if settings.budget_s else {}),
            **({"world_size": distributed.world().size, "per_device_batch_size": per_device}
               if distributed.is_distributed() else {})}


class _WallClock(TrainerCallback):
    """A training budget in seconds: the learning rate follows the schedule over the elapsed *time* (warm-up, then
    cosine or linear decay to 0 at the budget), and training stops when one more step (at the mean step time so far)
    would overrun it. The budget counts from the start of `train` (the Trainer's setup included). The Trainer's own schedule is constant, so the rate set here is the one each step uses."""

    def __init__(self, budget_s: float, learning_rate: float, warmup: float, scheduler: str) -> None:
        self.budget, self.lr, self.warmup, self.scheduler = budget_s, learning_rate, warmup, scheduler
        self.start = time.perf_counter()
        self.first_step: float | None = None  # when the first step began: the mean step time leaves setup out

    def rate(self, fraction: float) -> float:
        warm = self.warmup if self.warmup < 1 else 0.0  # warm-up given as a fraction of the run
        if fraction < warm:
            return self.lr * fraction / warm
        rest = min(1.0, (fraction - warm) / max(1e-9, 1 - warm))
        if self.scheduler == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * rest))
        return self.lr * (1 - rest) if self.scheduler == "linear" else self.lr

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.first_step is None:
            self.first_step = time.perf_counter()
        if optimizer is not None:
            lr = self.rate((time.perf_counter() - self.start) / self.budget)
            for group in optimizer.param_groups:
                group["lr"] = lr

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        step = (now - (self.first_step or self.start)) / max(1, state.global_step)
        if now - self.start + step > self.budget:
            control.should_training_stop = True


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

    def nll(batch: torch.Tensor) -> tuple[float, int]:
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        return float(total), batch[:, 1:].numel()

    return _mean_over_batches(model, ids, batch_size, nll)


@torch.no_grad()
def kl_to_base(model, base, ids: torch.Tensor, batch_size: int = 1) -> float:
    """Mean KL(base ‖ model) of the next-token distributions over every position of `ids`, in fp32 (nats per
    token). `base`: a SharedBase view over `model` (run as base per batch) or a separate unpruned model."""

    def kl(batch: torch.Tensor) -> tuple[float, int]:
        with as_base(base) as teacher:
            target = F.log_softmax(teacher(input_ids=batch, use_cache=False).logits.float(), dim=-1)
        pred = F.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
        return float(F.kl_div(pred, target, log_target=True, reduction="sum")), batch.numel()

    return _mean_over_batches(model, ids, batch_size, kl)


def _mean_over_batches(model, ids: torch.Tensor, batch_size: int, measure) -> float:
    """sum / count of `measure(batch) -> (sum, count)` over `ids` in batches on the model's device, the model in eval
    mode meanwhile (its training flag restored), rounded to 6 decimals."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    try:
        for start in range(0, len(ids), batch_size):
            part, n = measure(ids[start : start + batch_size].to(device))
            total += part
            count += n
    finally:
        model.train(was_training)
    return round(total / max(count, 1), 6)


def perplexity(loss: float) -> float:
    return round(math.exp(loss), 4) if loss < 50 else float("inf")
