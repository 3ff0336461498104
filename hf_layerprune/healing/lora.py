"""`lora` and `qlora`: LoRA (peft) on the pruned model with the LM loss, merged into stock weights.

- ``lora`` trains the adapter on the pruned model as it is (fp32/bf16, CPU or GPU) and merges it in place
  (``merge_and_unload``).
- ``qlora`` trains the adapter on a 4-bit NF4 copy of the pruned model (bitsandbytes, CUDA; gradient
  checkpointing, paged AdamW 8-bit, bf16 compute), then loads the adapter's weights into a LoRA wrapper over the
  *original-precision* pruned model and merges there (pitfall 8: never merge into dequantized 4-bit weights).

Default targets follow Gromov et al.: the MLP only (gate/up/down; OPT fc1/fc2; Phi-3 gate_up_proj/down_proj).
With tied embeddings `lm_head` is never adapted: asking for it adapts the shared embedding instead (pitfall 5).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hf_layerprune.surgery import quantized
from hf_layerprune.architectures import ARCHITECTURES, Architecture, get_architecture
from hf_layerprune.runtime.errors import ConfigError, StageError
from hf_layerprune.runtime.registry import option
from hf_layerprune.healing.base import HealContext, HealOptions, options_record
from hf_layerprune.healing.training import LMLoss, Rows, TrainSettings, gradient_checkpointing, lm_loss, train

DEFAULT_MLP_TARGETS = Architecture.lora_targets  # models without an adapter (the DeciLM layout)
ALL_LINEAR = "all-linear"  # peft's selector: every linear module of the model except the output head


@dataclass
class LoraOptions(HealOptions):
    """rank / lora_alpha (None: 2 x rank) / dropout / targets (module names, or ``all-linear`` for every linear
    module but the output head; None: the MLP, as Gromov et al.).
    gradient_checkpointing: None means on for qlora and for CUDA training, off on CPU."""

    rank: int = option(8, at_least=1)
    lora_alpha: float | None = option(None, above=0)
    dropout: float = option(0.05, at_least=0, below=1)
    targets: list[str] | None = None
    gradient_checkpointing: bool | None = None


def lora_targets(model, targets: list[str] | None, log: Callable[[str], None] = print) -> list[str] | str:
    """Module names to adapt; `lm_head` becomes the input embedding when the two are tied. ``all-linear`` is
    passed to peft, which resolves it to the names of every linear module but the output head."""
    model_type = model.config.model_type
    arch = ARCHITECTURES.get(model_type)
    names = list(targets) if targets else list(arch.lora_targets if arch else DEFAULT_MLP_TARGETS)
    if ALL_LINEAR in names:
        if len(names) > 1:
            raise ConfigError(f"--lora-targets {ALL_LINEAR} already names every linear module; give it alone")
        return ALL_LINEAR
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and head.weight is embed.weight
    if tied and "lm_head" in names:
        embed_name = get_architecture(model.config).embed.rpartition(".")[2]
        log(f"lm_head is tied to the input embeddings: adapting {embed_name} instead")
        names = [embed_name if n == "lm_head" else n for n in names]
    present = {name.rpartition(".")[2] for name, _ in model.named_modules()} | {name for name, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        raise ConfigError(f"--lora-targets {', '.join(missing)} not found in {model_type} (module names such as {', '.join(DEFAULT_MLP_TARGETS)})")
    return list(dict.fromkeys(names))


def lora_config(model, options: LoraOptions, log: Callable[[str], None] = print):
    from peft import LoraConfig

    if options.rank < 1:
        raise ConfigError(f"--lora-rank must be at least 1 (got {options.rank})")
    dropout = options.dropout
    if dropout and any(p.dim() == 3 for p in model.parameters()):
        # fused MoE experts ([experts, out, in] parameters, transformers 5): peft adapts them with its ParamWrapper,
        # which refuses dropout ("does not work with lora_dropout != 0")
        log(f"LoRA dropout 0 instead of {dropout}: {model.config.model_type} has fused expert weights")
        dropout = 0.0
    return LoraConfig(
        r=options.rank,
        lora_alpha=options.lora_alpha if options.lora_alpha is not None else 2 * options.rank,
        lora_dropout=dropout,
        target_modules=lora_targets(model, options.targets, log),
        bias="none",
        task_type="CAUSAL_LM",
    )


def merge_in_place(ctx: HealContext, peft_model):
    """`merge_and_unload`, after keeping the originals of the weights it changes for the base (copy-on-write)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            ctx.protect(module.get_base_layer())
    return peft_model.merge_and_unload()


def merge_adapter(model, config, adapter_state: dict[str, torch.Tensor], ctx: HealContext | None = None):
    """Load LoRA weights trained elsewhere (e.g. on a 4-bit copy) into `model` and merge them: in place (with
    `ctx`, the originals of the merged weights are kept for its base view first)."""
    from peft import get_peft_model, set_peft_model_state_dict

    peft_model = get_peft_model(model, config)
    device = next(model.parameters()).device
    result = set_peft_model_state_dict(peft_model, {k: v.to(device) for k, v in adapter_state.items()})
    if getattr(result, "unexpected_keys", None):
        raise StageError(f"adapter does not match the model: unexpected {result.unexpected_keys[:3]}")
    return merge_in_place(ctx, peft_model) if ctx is not None else peft_model.merge_and_unload()


def train_adapter(
    ctx: HealContext,
    options: LoraOptions,
    method: str,
    *,
    target=None,
    loss: Callable[[Any], torch.nn.Module] = LMLoss,
    optim: str = "adamw_torch",
    gradient_checkpointing_default: bool | None = None,
) -> tuple[dict, dict, Any, Any]:
    """Train a LoRA adapter on `target` (default: the pruned model itself) with `loss(peft_model)` as module.

    Returns (training record, adapter state dict, LoraConfig, peft model); `target` is left wrapped in peft."""
    from peft import get_peft_model, get_peft_model_state_dict

    target = ctx.model if target is None else target
    config = lora_config(ctx.model, options, ctx.log)
    torch.manual_seed(options.seed)
    peft_model = get_peft_model(target, config)
    what = f"rank {config.r} on {', '.join(sorted(config.target_modules))}"
    run = run_training(ctx, options, method, what, target, loss(peft_model), optim=optim,
                       gradient_checkpointing_default=gradient_checkpointing_default)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    return run, state, config, peft_model


def run_training(ctx: HealContext, options: LoraOptions, method: str, what: str, target, module: torch.nn.Module, *,
                 optim: str = "adamw_torch", gradient_checkpointing_default: bool | None = None) -> dict:
    """One Trainer run of `module` (whose trainable parameters live in `target`) on ctx.train_ids."""
    seq_len = ctx.train_ids.shape[1]
    steps = options.step_cap(seq_len)
    use_gc = options.gradient_checkpointing
    if use_gc is None:
        use_gc = gradient_checkpointing_default
    if use_gc is None:
        use_gc = next(target.parameters()).device.type == "cuda"
    settings = TrainSettings(steps=steps, batch_size=options.batch_size, learning_rate=options.lr(), seed=options.seed,
                             optim=optim, progress=options.progress, budget_s=options.budget_seconds())
    budget = f"{options.budget} of" if options.budget else f"{steps}"
    ctx.log(f"Healing with {method}: {what}, {budget} steps x {options.batch_size} x {seq_len} tokens")
    with gradient_checkpointing(target, use_gc):
        run = train(module, Rows(input_ids=ctx.train_ids), settings)
    run.update(gradient_checkpointing=bool(use_gc), optimizer=optim)
    return run


def training_record(method: str, options: LoraOptions, config, run: dict, ctx: HealContext, seconds: float,
                    targets: list[str] | None = None) -> dict:
    """`config`: the LoraConfig, or None for full-parameter training of the modules in `targets`."""
    steps = run["steps"]
    tokens = steps * options.batch_size * ctx.train_ids.shape[1]
    return {
        "method": method,
        "steps": steps,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / max(run["seconds"], 1e-9), 2),
        "learning_rate": options.lr(),
        "lora_rank": config.r if config is not None else None,
        "lora_alpha": config.lora_alpha if config is not None else None,
        "targets": sorted(config.target_modules) if config is not None else targets,
        "options": options_record(options),
        "gradient_checkpointing": run["gradient_checkpointing"],
        "optimizer": run["optimizer"],
        "losses": run["losses"],
        **{k: run[k] for k in ("world_size", "per_device_batch_size") if k in run},  # a multi-process launch
    }


def heal_lora(ctx: HealContext, options: LoraOptions) -> dict:
    start = time.perf_counter()
    loss_before = lm_loss(ctx.model, ctx.eval_ids)
    run, _, config, peft_model = train_adapter(ctx, options, "lora")
    merge_in_place(ctx, peft_model)  # in place: ctx.model gets plain Linear modules with W + BA back
    record = training_record("lora", options, config, run, ctx, time.perf_counter() - start)
    record.update(loss_before=loss_before, loss_after=lm_loss(ctx.model, ctx.eval_ids), merged_into=str(next(ctx.model.parameters()).dtype))
    return record


# ------------------------------------------------------------------------------------------------ qlora


def check_qlora_available(method: str = "qlora") -> None:
    """One-line errors when 4-bit training cannot run here (no bitsandbytes; no CUDA and no CPU backend)."""
    quantized.check_available(f"--heal {method}")


def quantized_copy(model, compute_dtype: torch.dtype = torch.bfloat16):
    """A 4-bit NF4 (double-quantized) copy of `model` on the current CUDA device (else the CPU), via a temporary
    checkpoint."""
    from transformers import AutoModelForCausalLM

    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="hf-layerprune-4bit-") as tmp:
        model.save_pretrained(tmp)
        return quantized.one_cpu_path(AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quantized.config(compute_dtype), dtype=compute_dtype, device_map={"": device}
        ))


def paged_optimizer() -> str:
    """bitsandbytes' paged 8-bit AdamW on CUDA (QLoRA's optimizer); on the CPU, where paging does not exist, AdamW."""
    cuda = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    return "paged_adamw_8bit" if cuda else "adamw_torch"


def heal_qlora(ctx: HealContext, options: LoraOptions) -> dict:
    """Train on a 4-bit copy, merge into the original-precision pruned model. A model loaded in 4-bit
    (`--load-in-4bit`) is trained in place and its adapter left unmerged: the save stage merges it into the
    checkpoint's 16-bit shards (streamed_merge.py)."""
    check_qlora_available()
    if quantized.is_4bit(ctx.model):
        return _heal_4bit_in_place(ctx, options)
    from peft import prepare_model_for_kbit_training

    start = time.perf_counter()
    loss_before = lm_loss(ctx.model, ctx.eval_ids)
    # The original-precision weights wait in host memory while the 4-bit copy trains: the GPU holds only the
    # 4-bit model, the adapter and its optimizer state (this is where the memory saving over plain peft comes from).
    home = next(ctx.model.parameters()).device
    if home.type == "cuda":
        ctx.model.to("cpu")
        torch.cuda.empty_cache()
    ctx.log("Quantizing the pruned model to 4-bit NF4 for training")
    copy4 = quantized_copy(ctx.model)
    use_gc = options.gradient_checkpointing is not False
    copy4 = prepare_model_for_kbit_training(
        copy4, use_gradient_checkpointing=use_gc, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    sub = HealContext(copy4, ctx.train_ids, ctx.eval_ids, ctx.base_model, ctx.cut, ctx.log)
    run, state, config, _ = train_adapter(sub, options, "qlora", optim=paged_optimizer(), gradient_checkpointing_default=False)
    run["gradient_checkpointing"] = use_gc
    del copy4, sub
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ctx.model.to(home)
    merge_adapter(ctx.model, config, state, ctx)  # into the bf16/fp32 weights, not dequant(W4)
    record = training_record("qlora", options, config, run, ctx, time.perf_counter() - start)
    record.update(loss_before=loss_before, loss_after=lm_loss(ctx.model, ctx.eval_ids), quantization="nf4 double-quant, bf16 compute",
                  merged_into=str(next(ctx.model.parameters()).dtype))
    return record


def _heal_4bit_in_place(ctx: HealContext, options: LoraOptions) -> dict:
    """QLoRA on a model loaded in 4-bit: the adapter is trained on it in place and stays unmerged (the 4-bit
    weights are never changed, so the base view needs no copy; "run as base" disables the adapter)."""
    start = time.perf_counter()
    loss_before = lm_loss(ctx.model, ctx.eval_ids)
    run, _, config, _ = train_adapter(ctx, options, "qlora", optim=paged_optimizer())
    record = training_record("qlora", options, config, run, ctx, time.perf_counter() - start)
    record.update(loss_before=loss_before, loss_after=lm_loss(ctx.model, ctx.eval_ids),
                  quantization="nf4 double-quant, loaded in 4-bit", merged_into="the checkpoint's shards, at save")
    return record
