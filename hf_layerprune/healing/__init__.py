"""Healing after layer removal: one registry, one small file per healer family. Every healer leaves the
stock architecture (adapters merged, corrections folded into existing weights), so the output loads with
``AutoModelForCausalLM.from_pretrained`` and no remote code.

| name       | what                                                          | file            | needs base model |
|------------|---------------------------------------------------------------|-----------------|------------------|
| none       | no healing                                                    |                 | no               |
| lora       | LoRA (peft) on the MLP, LM loss, merged                       | lora.py         | no               |
| qlora      | LoRA trained on a 4-bit NF4 copy, merged into bf16/fp32       | lora.py         | no               |
| distill    | LoRA trained with KL to the unpruned model's logits, merged   | distill.py      | yes              |
| replace    | LLM-Streamline: n removed layers -> one trained layer         | replacement.py  | yes              |
| bias       | Siddiqui: mean block update as a down_proj bias               | compensation.py | yes              |
| linear     | ReplaceMe: least-squares T fused into the prior down_proj     | compensation.py | yes              |
| projection | GradMAP-style: compensation at the most-drifted kept layer    | compensation.py | yes              |

``--heal NAME[:key=value,...]`` picks one (options per healer: see each options dataclass). Python API:
``heal(model, "linear", ids, base_model=..., report=...)``; the pipeline calls ``heal_for_recipe``.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_layerprune.errors import LayerPruneError
from hf_layerprune.healing.base import Healer, HealContext, HealOptions, Log, build_options, split_spec
from hf_layerprune.healing.compensation import ClosedFormOptions, ProjectionOptions, heal_bias, heal_linear, heal_projection
from hf_layerprune.healing.distill import DistillOptions, heal_distill
from hf_layerprune.healing.lora import LoraOptions, heal_lora, heal_qlora
from hf_layerprune.healing.replacement import ReplaceOptions, heal_replace

HEALERS: dict[str, Healer] = {}


def register(healer: Healer) -> Healer:
    HEALERS[healer.name] = healer
    return healer


register(Healer("lora", heal_lora, LoraOptions, "LoRA on the MLP with the LM loss, merged"))
register(Healer("qlora", heal_qlora, LoraOptions, "LoRA trained on a 4-bit NF4 copy, merged into the original weights"))
register(Healer("distill", heal_distill, DistillOptions, "LoRA trained with KL to the unpruned model, merged", needs_base_model=True))
register(Healer("replace", heal_replace, ReplaceOptions, "LLM-Streamline: the removed block becomes one trained layer", needs_base_model=True))
register(Healer("bias", heal_bias, ClosedFormOptions, "Siddiqui: the block's mean update as a bias", needs_base_model=True, trained=False))
register(Healer("linear", heal_linear, ClosedFormOptions, "ReplaceMe: least-squares transform fused into down_proj", needs_base_model=True, trained=False))
register(Healer("projection", heal_projection, ProjectionOptions, "GradMAP-style compensation of the most-drifted layer", needs_base_model=True, trained=False))

# Chosen on SmolLM2-135M-Instruct (benchmarks/RESULTS_healing.md, docs/healing.md): best perplexity per second.
DEFAULT_HEALER = "linear"

# recipe field -> options field
RECIPE_FIELDS = {"heal_steps": "steps", "heal_tokens": "tokens", "learning_rate": "learning_rate",
                 "lora_rank": "rank", "lora_targets": "targets", "seed": "seed"}


def available_healers() -> list[str]:
    return ["none", *HEALERS]


def get_healer(spec: str) -> tuple[Healer, dict[str, str]]:
    """The healer of `--heal NAME[:options]` and its raw options; one-line error for unknown names."""
    name, raw = split_spec(spec)
    if name == "default":
        name = DEFAULT_HEALER
    if name not in HEALERS:
        raise LayerPruneError(f"unknown --heal {name!r}; use one of {', '.join(available_healers())}")
    return HEALERS[name], raw


def needs_base_model(spec: str | None) -> bool:
    """Whether the pipeline must keep a copy of the unpruned model for this `--heal` value."""
    if not spec or split_spec(spec)[0] == "none":
        return False
    return get_healer(spec)[0].needs_base_model


def check_heal(spec: str | None) -> None:
    """Validate a `--heal` value (name and options) before any work is done."""
    if spec and split_spec(spec)[0] != "none":
        healer, raw = get_healer(spec)
        build_options(healer.options, healer.name, raw)


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
    healer, raw = get_healer(method)
    opts = build_options(healer.options, healer.name, {**raw, **options})
    if eval_ids is None:
        eval_ids = ids[: max(1, opts.eval_samples)]
    ctx = HealContext(model, ids, eval_ids, base_model, report if report is not None else {}, log)
    was_training = model.training
    try:
        record = healer.run(ctx, opts)
    finally:
        model.train(was_training)
    return record


def heal_for_recipe(model, tokenizer, recipe, report: dict, *, base_model=None, log: Log = print) -> dict[str, Any]:
    """The pipeline's heal stage: healing text from `--heal-data` (default: the calibration source), packed into
    `seq_len` windows, then `heal`. Returns the report's "healing" record (with the data description)."""
    from hf_layerprune.calibration import calibration_batches, calibration_record

    healer, raw = get_healer(recipe.heal)
    given = {opt: getattr(recipe, field) for field, opt in RECIPE_FIELDS.items() if getattr(recipe, field, None) is not None}
    known = set(healer.options.__dataclass_fields__)
    unused = sorted(k for k in given if k not in known)
    if unused:
        log(f"--heal {healer.name} does not use: {', '.join(unused)}")
    opts = build_options(healer.options, healer.name, {**{k: v for k, v in given.items() if k in known}, **raw})
    opts.progress = True
    if healer.needs_base_model and base_model is None:
        raise LayerPruneError(f"--heal {healer.name} needs the unpruned model; the pipeline did not keep a copy")
    if healer.trained:
        train_samples = opts.resolve_steps(recipe.seq_len) * opts.batch_size
    else:
        train_samples = max(1, opts.tokens // recipe.seq_len) if opts.tokens else recipe.calibration_samples
    samples = train_samples + opts.eval_samples
    source = recipe.heal_data or recipe.calibration
    log(f"Healing data: {samples} x {recipe.seq_len} tokens from {source} ({opts.eval_samples} held out)")
    generator = base_model if base_model is not None else model  # `self` text comes from the unpruned model
    ids = calibration_batches(source, tokenizer, model=generator, samples=samples, seq_len=recipe.seq_len,
                              seed=recipe.seed, text_column=recipe.text_column)
    data = calibration_record(source, tokenizer, model=generator, samples=samples, seq_len=recipe.seq_len,
                              seed=recipe.seed, text_column=recipe.text_column, batches=ids)
    ctx = HealContext(model, ids[:train_samples], ids[train_samples:], base_model, report, log)
    record = healer.run(ctx, opts)
    model.eval()
    record["data"] = data
    return record


__all__ = [
    "DEFAULT_HEALER",
    "HEALERS",
    "Healer",
    "HealContext",
    "HealOptions",
    "available_healers",
    "check_heal",
    "get_healer",
    "heal",
    "heal_for_recipe",
    "needs_base_model",
    "register",
]
