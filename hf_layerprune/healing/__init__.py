"""Healing after layer removal: one registry, one small file per healer family. Every healer leaves the
stock architecture (adapters merged, corrections folded into existing weights), so the output loads with
``AutoModelForCausalLM.from_pretrained`` and no remote code.

Healers are registered in ``HEALERS`` (registry.py) below, each with its description, papers, tags and
capabilities (``needs_base``, ``trained``); docs/healing.md has the table (checked against the registry by
tests/test_registry.py).

``--heal NAME[:key=value,...]`` picks one (options per healer: see each options dataclass). Python API:
``heal(model, "linear", ids, base_model=..., report=...)``; the pipeline calls ``heal_for_recipe``.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_layerprune import distributed
from hf_layerprune.base_view import as_base
from hf_layerprune.errors import LayerPruneError
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
from hf_layerprune.registry import Registry

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


def get_healer(spec: str) -> tuple[Healer, dict[str, str]]:
    """The healer of `--heal NAME[:options]` and its raw options; one-line error for unknown names."""
    name, raw = split_spec(spec, "--heal")
    return HEALERS.get_entry(DEFAULT_HEALER if name == "default" else name), raw


def _stages(spec: str | None) -> list[str]:
    """The healers of a `--heal` value, `none` left out."""
    if not spec:
        return []
    return [part for part in split_chain(spec) if split_spec(part)[0] != "none"]


def trains(spec: str | None) -> bool:
    """Whether a `--heal` value has a trained healer (an optimizer loop) in its chain."""
    return any(get_healer(part)[0].trained for part in _stages(spec))


def check_heal(spec: str | None) -> None:
    """Validate a `--heal` value (names and options, every stage of a chain) before any work is done."""
    for part in _stages(spec):
        healer, raw = get_healer(part)
        build_options(healer.options, healer.name, raw)


def check_applies(healer: Healer, model) -> None:
    """One-line error, before any work, when `healer` cannot run on `model` (e.g. `linear` on sparse MoE)."""
    refusal = healer.refuses(model)
    if refusal:
        raise LayerPruneError(f"--heal {healer.name}: {refusal}")


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


def heal(
    model,
    method: str,
    ids: torch.Tensor,
    *,
    base_model=None,
    report: dict | None = None,
    eval_ids: torch.Tensor | None = None,
    log: Log = print,
    **options: Any,
) -> dict[str, Any]:
    """Heal the pruned `model` in place on token ids `ids` [samples, seq_len]; return the healing record.

    `report` needs removed_layers / kept_layers / num_layers_before (0-based, of the base model) for the
    healers that compare with `base_model`. `eval_ids` (default: the first `eval_samples` rows of `ids`) is
    where loss_before / loss_after are measured. Options: the healer's options dataclass fields."""
    parts = _stages(method)
    report = report if report is not None else {}  # one report for every stage (`replace` updates it)
    resolved = [get_healer(part) for part in parts]
    for healer, _ in resolved:  # every stage is refused before the first one runs
        check_applies(healer, model)
    stages = []
    for healer, raw in resolved:
        given = options if len(parts) == 1 else {k: v for k, v in options.items() if k in healer.options.__dataclass_fields__}
        opts = build_options(healer.options, healer.name, {**raw, **given})
        stage_eval = ids[: max(1, opts.eval_samples)] if eval_ids is None else eval_ids
        ctx = HealContext(model, ids, stage_eval, base_model, report, log)
        was_training = model.training
        try:
            stages.append(healer.run(ctx, opts))
        finally:
            model.train(was_training)
    if not stages:
        raise LayerPruneError(f"--heal {method!r} names no healer; use one of {', '.join(available_healers())}")
    return chain_record(stages)


def heal_for_recipe(model, tokenizer, recipe, report: dict, *, base_model=None, log: Log = print) -> dict[str, Any]:
    """The pipeline's heal stage: healing text from `--heal-data` (default: the calibration source), packed into
    `seq_len` windows, then `heal`. Returns the report's "healing" record (with the data description)."""
    from hf_layerprune.calibration import calibration_batches, calibration_record

    given = {opt: getattr(recipe, field) for field, opt in RECIPE_FIELDS.items() if getattr(recipe, field, None) is not None}
    plan = []  # (healer, options, training samples) per stage of the chain
    for part in _stages(recipe.heal):
        healer, raw = get_healer(part)
        known = set(healer.options.__dataclass_fields__)
        unused = sorted(k for k in given if k not in known)
        if unused:
            log(f"--heal {healer.name} does not use: {', '.join(unused)}")
        opts = build_options(healer.options, healer.name, {**{k: v for k, v in given.items() if k in known}, **raw})
        opts.progress = True
        if healer.needs_base_model and base_model is None:
            raise LayerPruneError(f"--heal {healer.name} needs the unpruned model; the pipeline did not keep a copy")
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
    for healer, opts, train_samples in plan:
        ctx = HealContext(model, ids[:train_samples], ids[samples - held_out:], base_model, report, log)
        stages.append(healer.run(ctx, opts))
        model.eval()
    record = chain_record(stages)
    record["data"] = data
    return record


__all__ = [
    "DEFAULT_HEALER",
    "DEFAULT_SUBLAYER_HEALER",
    "HEALERS",
    "Healer",
    "HealContext",
    "HealOptions",
    "available_healers",
    "chain_record",
    "check_heal",
    "default_healer",
    "get_healer",
    "heal",
    "heal_for_recipe",
    "register",
    "split_chain",
    "trains",
]
