"""The Healer record and the options every healer shares (`--heal NAME:key=value,...`, read by registry.py).

A healer is one function ``run(ctx, options) -> record`` plus an options dataclass (peft style: the dataclass
carries the defaults and documents them). ``--heal-steps``, ``--heal-tokens``, ``--learning-rate``,
``--lora-rank``, ``--lora-targets`` and ``--seed`` fill the shared fields; anything else is given after the name,
e.g. ``--heal distill:temperature=2,alpha=0.5`` or ``--heal replace:mode=lm``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hf_layerprune.runtime import registry
from hf_layerprune.runtime.errors import ConfigError, StageError
from hf_layerprune.recipe import parse_duration
from hf_layerprune.runtime.registry import option, split_spec  # noqa: F401  (`--heal NAME:key=value,...`)
from hf_layerprune.report import CutSection

Log = Callable[[str], None]
DEFAULT_STEPS = 100
BUDGET_STEP_CAP = 10**6  # a budget's steps: the wall clock ends training long before


@dataclass
class HealOptions:
    """Options of every healer.

    steps / tokens: training budget of trained healers (tokens = steps x batch_size x seq_len); for the
        closed-form healers `tokens` sets how much calibration text the fit sees.
    learning_rate: None means the healer's own default (`default_learning_rate`).
    batch_size: sequences per optimizer step (trained healers) or per forward pass (closed-form healers).
    eval_samples: held-out sequences on which loss_before / loss_after are measured.
    progress: show the Trainer's progress bar.
    budget: wall-clock training time of a trained healer ("20m", "90s"; `--heal-budget`): the steps are as many as
        fit (the learning-rate schedule runs over time, training stops before a step would overrun it); with
        --heal-steps / --heal-tokens as well, those cap the steps. Setup and held-out evaluation are not counted.
    """

    steps: int | None = option(None, at_least=1)
    tokens: int | None = option(None, at_least=1)
    learning_rate: float | None = option(None, above=0)
    seed: int = option(0, at_least=0)
    batch_size: int = option(4, at_least=1)
    eval_samples: int = option(4, at_least=1)
    progress: bool = False
    budget: str | None = None

    default_learning_rate: typing.ClassVar[float] = 3e-4

    def __post_init__(self) -> None:
        """Checked when the options are built, i.e. when `--heal` is read, before any model is loaded."""
        for name in ("steps", "tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--heal-{name} must be at least 1 (got {value})")
        if self.batch_size < 1 or self.eval_samples < 1:
            raise ConfigError(f"--heal batch_size and eval_samples must be at least 1 (got {self.batch_size}, {self.eval_samples})")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be positive (got {self.learning_rate})")
        parse_duration(self.budget)

    def budget_seconds(self) -> float | None:
        return parse_duration(self.budget)

    def step_cap(self, seq_len: int) -> int:
        """The Trainer's max_steps: the resolved steps, or with a budget and no explicit steps/tokens as many as
        the budget allows (BUDGET_STEP_CAP; the wall clock stops it)."""
        if self.budget is not None and self.steps is None and self.tokens is None:
            return BUDGET_STEP_CAP
        return self.resolve_steps(seq_len)

    def lr(self) -> float:
        return float(self.learning_rate if self.learning_rate is not None else self.default_learning_rate)

    def resolve_steps(self, seq_len: int) -> int:
        """Optimizer steps: --heal-steps, else --heal-tokens / (batch_size x seq_len), else DEFAULT_STEPS."""
        if self.steps is not None:
            return int(self.steps)
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / (self.batch_size * seq_len)))
        return DEFAULT_STEPS

    def training_samples(self, seq_len: int) -> int:
        """Distinct training sequences a trained healer needs (one per sequence per step by default)."""
        return self.resolve_steps(seq_len) * self.batch_size


@dataclass
class CycledOptions(HealOptions):
    """Options of a trained healer whose loss is cheap per step (`absorb`, `tail`): `samples` distinct sequences
    (None: steps x batch_size) cycled for as many epochs as the steps need; `default_steps` without steps/tokens."""

    samples: int | None = option(64, at_least=1)

    default_steps: typing.ClassVar[int] = DEFAULT_STEPS

    def training_samples(self, seq_len: int) -> int:
        """Sequences the pipeline must provide for training."""
        total = super().training_samples(seq_len)
        return min(total, self.samples) if self.samples else total

    def resolve_steps(self, seq_len: int) -> int:
        if self.steps is None and self.tokens is None:
            return self.default_steps
        return super().resolve_steps(seq_len)


@dataclass
class HealContext:
    """What a healer works on. `model` is the pruned model, healed in place; `base_model` the unpruned one: a
    `base_view.SharedBase` over the same weights (the pipeline's) or a separate model, read only through
    `with ctx.as_base() as base:`; a healer calls `ctx.protect(module)` (or `ctx.snapshot`) before it changes a
    module of `model`, so that the base keeps the original (copy-on-write); `cut` the cut stage's section (removed
    and kept layers of the base model: `removed_and_kept`); a healer that changes the cut (`replace` puts a layer
    back) sets a new one (`dataclasses.replace`), which the heal stage returns; `train_ids` / `eval_ids` token ids
    [samples, seq_len]."""

    model: Any
    train_ids: torch.Tensor
    eval_ids: torch.Tensor
    base_model: Any = None
    cut: CutSection | None = None
    log: Log = print

    def require_base(self, method: str) -> Any:
        if self.base_model is None:
            raise StageError(f"--heal {method} needs the unpruned model (base_model) to compare with; none was given")
        return self.base_model

    def as_base(self):
        """`with ctx.as_base() as base:` the unpruned model (a `SharedBase` view run as base, or a separate model)."""
        from hf_layerprune.surgery.base_view import as_base

        return as_base(self.base_model)

    def protect(self, module: torch.nn.Module, names: list[str] | None = None) -> bool:
        """Copy-on-write before changing `module` of the pruned model (see base_view): True when newly kept."""
        from hf_layerprune.surgery.base_view import protect

        return protect(self.base_model, module, names)

    def snapshot(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`module`'s parameters as they are now, to put back later: the view's originals when this call is the
        first to protect them (no extra copy), else clones."""
        from hf_layerprune.surgery.base_view import SharedBase

        view, slots = self.base_model, _named_slots(module)
        if isinstance(view, SharedBase):
            first = not any((id(o), n) in view.originals for o, n in slots.values())
            view.protect(module)
            if first:
                return {name: view.original(o, n) for name, (o, n) in slots.items() if view.original(o, n) is not None}
        return {n: p.detach().clone() for n, p in module.named_parameters()}

    def removed_and_kept(self, method: str) -> tuple[list[int], list[int], int]:
        """(removed layers, kept layers, layers of the base model), of the base model's numbering."""
        if self.cut is None:
            raise StageError(f"--heal {method} needs the cut section (removed and kept layers) from the cut stage")
        removed, kept = sorted(self.cut.removed_layers), sorted(self.cut.kept_layers)
        return removed, kept, len(removed) + len(kept)


@dataclass(frozen=True)
class Healer:
    """One healer; everything the card, the help and the pipeline say about it is declared here (registry.py).

    capabilities: ``needs_base`` (compares with the unpruned model, so the pipeline keeps a copy) and ``trained``
    (consumes steps x batch_size sequences; the closed-form healers fit on a calibration set instead).
    """

    name: str
    run: Callable[[HealContext, Any], dict]
    options: type = HealOptions
    summary: str = ""  # one line: what it does, with its paper
    description: str = ""  # what it does, as the card's method description says it
    citations: tuple[str, ...] = ()  # keys of card/bibliography.json, linked in the method description
    recipe_citations: tuple[str, ...] = ()  # papers whose training recipe it follows: in the references only
    tags: tuple[str, ...] = ()  # model-card tags
    capabilities: frozenset[str] = frozenset({"trained"})
    proxy: str | None = None  # closed-form healer that stands in for this trained one when `auto` compares candidates
    refusal: Callable[[Any], str | None] | None = None  # model -> why this healer cannot run on it (None: it can)

    @property
    def needs_base_model(self) -> bool:
        return "needs_base" in self.capabilities

    @property
    def trained(self) -> bool:
        return "trained" in self.capabilities

    def refuses(self, model) -> str | None:
        """Why this healer cannot heal `model` (e.g. no single down_proj to fold into), or None."""
        return self.refusal(model) if self.refusal else None


def _named_slots(module: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    return {f"{prefix}.{name}" if prefix else name: (owner, name)
            for prefix, owner in module.named_modules() for name in owner._parameters}


def contiguous_runs(indices: list[int]) -> list[list[int]]:
    """[3, 4, 5, 9, 10] -> [[3, 4, 5], [9, 10]]."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


# ------------------------------------------------------------------------------------------------ options
def build_options(cls: type, method: str, raw: dict[str, Any]) -> Any:
    """The options dataclass of healer `method` from strings (CLI) or values (Python): registry.build_options."""
    return registry.build_options(cls, f"--heal {method}", raw)


def options_record(options: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in ("progress",)}
