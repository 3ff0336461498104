"""Healing after layer removal: one registry, one small file per healer family. Every healer leaves the
stock architecture (adapters merged, corrections folded into existing weights), so the output loads with
``AutoModelForCausalLM.from_pretrained`` and no remote code.

Healers are registered in ``HEALERS`` (registry.py) below, each with its description, papers, tags and
capabilities (``needs_base``, ``trained``); docs/healing.md has the table (checked against the registry by
tests/test_registry.py).

``--heal NAME[:key=value,...]`` picks one (options per healer: see each options dataclass). Python API:
``heal(model, "linear", ids, base_model=..., cut=...)`` (``heal_and_cut`` also returns the cut as it is after the
chain: ``replace`` puts a layer back); the pipeline calls ``heal_for_recipe``. Healers receive the cut section
(``report.CutSection``) through ``HealContext`` and the stage returns a typed ``report.HealingSection``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from hf_layerprune.runtime import distributed
from hf_layerprune.surgery.base_view import as_base
from hf_layerprune.runtime.errors import ConfigError, StageError, UnsupportedModel
from hf_layerprune.healing.absorb import AbsorbOptions, heal_absorb
from hf_layerprune.healing.base import Healer, HealContext, HealOptions, Log, build_options, split_spec
from hf_layerprune.healing.compensation import (
    ClosedFormOptions, ProjectionOptions, fold_refusal, heal_bias, heal_linear, heal_projection,
)
from hf_layerprune.healing.distill import DistillOptions, heal_distill
from hf_layerprune.healing.lora import LoraOptions, heal_lora, heal_qlora
from hf_layerprune.healing.replacement import ReplaceOptions, heal_replace
from hf_layerprune.healing.rescale import RescaleOptions, heal_rescale
from hf_layerprune.healing.tail import TailOptions, heal_tail
from hf_layerprune.recipe import DEFAULT_HEALER, DEFAULT_SUBLAYER_HEALER, default_healer
from hf_layerprune.runtime.registry import Registry
from hf_layerprune.report import CutSection, HealingSection

HEALERS: Registry[Healer] = Registry("healer", "--heal", extra=("none",))
register = HEALERS.register
NEEDS_BASE, CLOSED_FORM = frozenset({"trained", "needs_base"}), frozenset({"needs_base"})

register(Healer(
    "lora", heal_lora, LoraOptions, "LoRA on the MLP with the LM loss, merged",
    "LoRA on the MLP trained with the LM loss, merged into the weights", ("lora",), tags=("lora",)))
register(Healer(
    "qlora", heal_qlora, LoraOptions, "LoRA trained on a 4-bit NF4 copy, merged into the original weights",
    "LoRA trained on a 4-bit NF4 copy, merged into the 16-bit weights", ("qlora", "lora"), ("gromov2024",), tags=("qlora",)))
register(Healer(
    "distill", heal_distill, DistillOptions, "LoRA trained with KL to the unpruned model, merged",
    "LoRA trained to match the unpruned model's next-token distribution (KL), merged", ("lora",),
    tags=("distillation",), capabilities=NEEDS_BASE))
register(Healer(
    "replace", heal_replace, ReplaceOptions, "LLM-Streamline: the removed block becomes one trained layer",
    "the removed block replaced by one layer trained on the block's input and output", ("streamline",),
    tags=("layer-replacement",), capabilities=NEEDS_BASE))
register(Healer(
    "absorb", heal_absorb, AbsorbOptions, "the kept layer before each removed block is trained to do its job",
    "the kept layers before each removed block trained to do the block's work too (LLM-Streamline's "
    "layer replacement at the requested depth)", ("streamline",), tags=("layer-absorption",), capabilities=NEEDS_BASE,
    proxy="linear"))
register(Healer(
    "tail", heal_tail, TailOptions, "the last layers and the final norm trained with KL to the unpruned model",
    "the last kept layers and the final norm (and an untied output head) trained to match the unpruned model's "
    "next-token distribution (KL), the layers before them frozen", ("lu2024",), tags=("distillation",),
    capabilities=NEEDS_BASE))
register(Healer(
    "bias", heal_bias, ClosedFormOptions, "Siddiqui: the block's mean update as a bias",
    "the removed block's mean update added back as a bias", ("siddiqui2024",), tags=("bias-compensation",),
    capabilities=CLOSED_FORM, refusal=fold_refusal))
register(Healer(
    "linear", heal_linear, ClosedFormOptions, "ReplaceMe: least-squares transform fused into down_proj",
    "a least-squares linear transform fused into a down-projection", ("replaceme",), tags=("linear-compensation",),
    capabilities=CLOSED_FORM, refusal=fold_refusal))
register(Healer(
    "projection", heal_projection, ProjectionOptions, "GradMAP-style compensation of the most-drifted layer",
    "a projection compensation of the most-drifted layer folded into its down-projection", ("gradmap",),
    tags=("projection-compensation",), capabilities=CLOSED_FORM, refusal=fold_refusal))
register(Healer(
    "rescale", heal_rescale, RescaleOptions, "Prune&Comp: the stream's magnitude gap at each removed run, rescaled",
    "training-free magnitude compensation: the residual stream before each removed run scaled by the run's "
    "measured magnitude gain, folded into the weights that write it", ("prunecomp",), tags=("magnitude-compensation",),
    capabilities=CLOSED_FORM, refusal=fold_refusal))

# recipe field -> options field
RECIPE_FIELDS = {"heal_steps": "steps", "heal_tokens": "tokens", "learning_rate": "learning_rate",
                 "lora_rank": "rank", "lora_targets": "targets", "seed": "seed", "heal_budget": "budget"}
LORA_FIELDS = ("rank", "targets")  # filled by --lora-rank / --lora-targets in LoRA healers' options only


def available_healers() -> list[str]:
    return HEALERS.choices()


def split_chain(spec: str) -> list[str]:
    """`linear+distill:alpha=0.5` -> ["linear", "distill:alpha=0.5"]: healers run one after another.

    A `+` that does not start a healer name belongs to an option value (`lora:targets=q_proj+v_proj`)."""
    parts: list[str] = []
    for piece in str(spec).split("+"):
        name = piece.partition(":")[0].strip()
        if parts and ":" in parts[-1] and name not in HEALERS and name not in ("none", "default"):
            parts[-1] += "+" + piece
        else:
            parts.append(piece)
    return parts


def get_healer(spec: str) -> tuple[Healer | None, dict[str, str]]:
    """The healer of `--heal NAME[:options]` and its raw options (None for `none`); one-line error for unknown
    names."""
    name, raw = split_spec(spec, "--heal")
    if name == "none":
        return None, raw
    return HEALERS.get_entry(DEFAULT_HEALER if name == "default" else name), raw


@dataclass(frozen=True)
class HealStep:
    """One healer of a `--heal` chain with its options: typed, range-checked, and merged with the recipe's shared
    fields (`--heal-steps`, `--lora-rank`, ...). `heal_chain` builds them once, when the recipe is checked."""

    healer: Healer
    options: Any
    spec: str  # as the user wrote it, e.g. "linear:ridge=0.01"
    unused: tuple[str, ...] = ()  # recipe fields this healer does not take (said once when it runs)

    @property
    def name(self) -> str:
        return self.healer.name


def heal_chain(spec: str | None, recipe=None) -> tuple[HealStep, ...]:
    """The healers of a `--heal` value (`none` left out), each with its options built and checked: the one reader
    of `--heal` (checks, memory estimate, route and format choices, `auto`, the heal stage). With `recipe`, its
    shared healing fields fill the options the spec does not give."""
    given = {} if recipe is None else {opt: getattr(recipe, field) for field, opt in RECIPE_FIELDS.items()
                                       if getattr(recipe, field, None) is not None}
    steps = []
    for part in split_chain(spec or "none"):
        healer, raw = get_healer(part)
        if healer is None:
            continue
        known = set(healer.options.__dataclass_fields__)
        if not issubclass(healer.options, LoraOptions):  # `linear:rank` is the rank of its Δ, not --lora-rank's
            known -= set(LORA_FIELDS)
        options = build_options(healer.options, healer.name, {**{k: v for k, v in given.items() if k in known}, **raw})
        steps.append(HealStep(healer, options, part.strip(), tuple(sorted(k for k in given if k not in known))))
    return tuple(steps)


def heal_names(spec: str | None) -> list[str]:
    """The healer names of a `--heal` value, in order, `none` left out."""
    return [step.name for step in heal_chain(spec)]


def trains(spec: str | None) -> bool:
    """Whether a `--heal` value has a trained healer (an optimizer loop) in its chain."""
    return any(step.healer.trained for step in heal_chain(spec))


def check_heal(spec: str | None, recipe=None) -> tuple[HealStep, ...]:
    """Validate a `--heal` value (names and options of every stage, with the recipe's shared fields) before any
    work is done; the checked chain."""
    return heal_chain(spec, recipe)


def check_applies(healer: Healer, model) -> None:
    """One-line error, before any work, when `healer` cannot run on `model` (e.g. `linear` on sparse MoE)."""
    refusal = healer.refuses(model)
    if refusal:
        raise UnsupportedModel(f"--heal {healer.name}: {refusal}")


def chain_record(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """One healing record for healers run in sequence: the first loss before, the last loss after, all losses."""
    if len(stages) == 1:
        return stages[0]
    return {
        "method": "+".join(r["method"] for r in stages),
        "stages": stages,
        "steps": sum(r.get("steps") or 0 for r in stages),
        "tokens": sum(r.get("tokens") or 0 for r in stages),
        "seconds": round(sum(r.get("seconds") or 0 for r in stages), 3),
        "loss_before": stages[0].get("loss_before"),
        "loss_after": stages[-1].get("loss_after"),
        "losses": [loss for r in stages for loss in r.get("losses") or []],
    }


def heal(model, method: str, ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """Heal the pruned `model` in place on token ids `ids` [samples, seq_len]; return the healing record
    (``heal_and_cut``: the record and the cut section afterwards)."""
    return heal_and_cut(model, method, ids, **kwargs)[0]


def as_cut(layers: CutSection | dict[str, Any] | None) -> CutSection | None:
    """The cut section healers read: given as one, or as a mapping {removed_layers, kept_layers} (the older form)."""
    if layers is None or isinstance(layers, CutSection):
        return layers
    kept = list(layers["kept_layers"])
    return CutSection(num_layers_after=len(kept), removed_layers=list(layers["removed_layers"]), kept_layers=kept)


def heal_and_cut(
    model,
    method: str,
    ids: torch.Tensor,
    *,
    base_model=None,
    cut: CutSection | None = None,
    report: dict | None = None,
    eval_ids: torch.Tensor | None = None,
    log: Log = print,
    **options: Any,
) -> tuple[dict[str, Any], CutSection | None]:
    """Heal the pruned `model` in place on token ids `ids` [samples, seq_len]; (the healing record, the cut section
    as it is afterwards).

    `cut` (or `report`, a mapping with removed_layers / kept_layers, 0-based of the base model) is needed by the
    healers that compare with `base_model`. `eval_ids` (default: the first `eval_samples` rows of `ids`) is where
    loss_before / loss_after are measured. Options: the healer's options dataclass fields."""
    parts = [part for part in split_chain(method or "none") if get_healer(part)[0] is not None]
    cut = as_cut(cut if cut is not None else report)
    resolved = [get_healer(part) for part in parts]
    for healer, _ in resolved:  # every stage is refused before the first one runs
        check_applies(healer, model)
    stages = []
    for healer, raw in resolved:
        given = options if len(parts) == 1 else {k: v for k, v in options.items() if k in healer.options.__dataclass_fields__}
        opts = build_options(healer.options, healer.name, {**raw, **given})
        stage_eval = ids[: max(1, opts.eval_samples)] if eval_ids is None else eval_ids
        ctx = HealContext(model, ids, stage_eval, base_model, cut, log)
        was_training = model.training
        try:
            stages.append(healer.run(ctx, opts))
        finally:
            model.train(was_training)
        cut = ctx.cut  # the next stage sees the cut as this one left it
    if not stages:
        raise ConfigError(f"--heal {method!r} names no healer; use one of {', '.join(available_healers())}")
    return chain_record(stages), cut


def heal_for_recipe(model, tokenizer, recipe, cut: CutSection | dict[str, Any], *, base_model=None,
                    log: Log = print, chain: tuple[HealStep, ...] | None = None) -> tuple[HealingSection, CutSection]:
    """The pipeline's heal stage: healing text from `--heal-data` (default: the calibration source), packed into
    `seq_len` windows, then the healers of `chain` (default: `heal_chain(recipe.heal, recipe)`, which the
    pipeline's plan holds already) on the cut model. Returns the report's healing section (with the data
    description) and the cut section as it is afterwards (`replace` puts a layer back)."""
    from hf_layerprune.runtime.calibration import calibration_batches, calibration_record

    plan = []  # (healer, options, training samples) per stage of the chain
    for step in heal_chain(recipe.heal, recipe) if chain is None else chain:
        healer = step.healer
        if step.unused:
            log(f"--heal {healer.name} does not use: {', '.join(step.unused)}")
        opts = dataclasses.replace(step.options, progress=True)  # the plan's options stay as checked
        if healer.needs_base_model and base_model is None:
            raise StageError(f"--heal {healer.name} needs the unpruned model; the pipeline did not keep a copy")
        check_applies(healer, model)
        if healer.trained:
            train_samples = opts.training_samples(recipe.seq_len)
        else:
            train_samples = max(1, opts.tokens // recipe.seq_len) if opts.tokens else recipe.calibration_samples
        plan.append((healer, opts, train_samples))
    trained = [opts for healer, opts, _ in plan if healer.trained and opts.budget]
    for opts in trained if len(trained) > 1 else []:  # the trained stages of a chain share one --heal-budget
        opts.budget = f"{opts.budget_seconds() / len(trained):.3f}s"
    held_out = max(opts.eval_samples for _, opts, _ in plan)
    samples = max(n for _, _, n in plan) + held_out
    source = recipe.heal_data or recipe.calibration
    log(f"Healing data: {samples} x {recipe.seq_len} tokens from {source} ({held_out} held out)")
    with as_base(base_model if base_model is not None else model) as generator:  # `self` text: the unpruned model
        ids = distributed.on_main(calibration_batches, source, tokenizer, model=generator, samples=samples,
                                  seq_len=recipe.seq_len, seed=recipe.seed, text_column=recipe.text_column, share=True)
        data = calibration_record(source, tokenizer, model=generator, samples=samples, seq_len=recipe.seq_len,
                                  seed=recipe.seed, text_column=recipe.text_column, batches=ids)
    stages = []
    cut = as_cut(cut)
    for healer, opts, train_samples in plan:
        ctx = HealContext(model, ids[:train_samples], ids[samples - held_out:], base_model, cut, log)
        stages.append(healer.run(ctx, opts))
        cut = ctx.cut
        model.eval()
    record = chain_record(stages)
    record["data"] = data
    return HealingSection.from_dict(record), cut


__all__ = [
    "DEFAULT_HEALER",
    "DEFAULT_SUBLAYER_HEALER",
    "HEALERS",
    "Healer",
    "HealContext",
    "HealOptions",
    "HealStep",
    "available_healers",
    "chain_record",
    "check_heal",
    "default_healer",
    "get_healer",
    "heal",
    "heal_and_cut",
    "heal_chain",
    "heal_for_recipe",
    "heal_names",
    "register",
    "split_chain",
    "trains",
]
