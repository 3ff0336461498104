"""Every check of a recipe that can run before any weight is read: options of every stage, the target against
the source's config, the output folder, the memory the recipe will need (memory.py). `pipeline.run`, `push` and
`sweep` call them first, so a mistyped option costs nothing (tests/test_bad_input.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from huggingface_hub import constants

from hf_layerprune.architectures import get_architecture
from hf_layerprune.surgery.checkpoint import check_checkpoint_layers, check_config_layer_count, check_layer_count, loading_error
from hf_layerprune.runtime.errors import CheckpointError, ConfigError, LayerPruneError
from hf_layerprune.runtime.formats import formats_of
from hf_layerprune.hub import hub_files
from hf_layerprune.surgery.loading import Source, check_device, resolve_source, torch_dtype
from hf_layerprune.flow.memory import GiB, check_fits, element_bytes, shape_of
from hf_layerprune.recipe import AUTO, Recipe
from hf_layerprune.runtime.selection import check_strategy, parse_protect
from hf_layerprune.surgery.layers import parse_size, plain_config, validate_removed
from hf_layerprune.flow.targets import uses_metric

# The stages' own checks (metrics, healers, tasks, 4-bit) are imported where a recipe uses that stage: they import
# torch, which a cut by --layers on disk never needs (streaming.py).

Log = Callable[[str], None]


def check_recipe(recipe: Recipe) -> tuple:
    """Every option of every stage, checked before the network and before any weight is read: the target, the
    metric and its options, the selection, the heal chain and its options, the dtype and device, the tasks.
    Returns the checked heal chain (healing.HealStep per healer; empty for `none`)."""
    recipe.validate_target()
    recipe.resolve_defaults()
    if recipe.target is not None:
        for flag, on in (("--load-in-4bit", recipe.load_in_4bit), ("--offload", recipe.offload),
                         ("--rounds", recipe.rounds > 1), ("--protect", bool(recipe.protect))):
            if on:
                raise ConfigError(f"--target judges its plans on the whole model in memory; drop {flag}")
    check_4bit(recipe)
    if uses_metric(recipe) and recipe.metric_name != AUTO:
        from hf_layerprune.scoring import get_metric

        get_metric(recipe.metric_name).check_granularity(recipe.granularity)
    if recipe.selection is not None:
        check_strategy(recipe.selection)
    heal = ()
    if recipe.heal not in (None, "none"):  # the healers import torch: only a recipe that heals needs them
        from hf_layerprune.healing import check_heal

        heal = check_heal(recipe.heal, recipe)
    torch_dtype(recipe.dtype)
    check_device(recipe.device)
    check_shard_size(recipe.max_shard_size)
    if recipe.evaluate:  # unknown tasks fail now, not after cutting and healing
        from hf_layerprune.evaluation import check_tasks, settings_from_recipe
        from hf_layerprune.evaluation.fidelity import check_held_out

        settings = settings_from_recipe(recipe)
        check_tasks(settings)
        check_held_out(settings.generation, calibration=recipe.calibration, heal_data=recipe.heal_data)
    return heal


def check_4bit(recipe: Recipe) -> None:
    """`--load-in-4bit` runs what works on 4-bit weights: a metric, the cut, QLoRA in place, evaluation; the
    16-bit output is written from the original shards (quantized.py). Everything else is refused up front."""
    if not recipe.load_in_4bit:
        return
    from hf_layerprune.healing import heal_names
    from hf_layerprune.surgery.quantized import check_available

    if recipe.granularity != "block":
        raise ConfigError("--load-in-4bit removes whole layers; --granularity attention|mlp exports a DeciLM model "
                          "from the 16-bit weights, so run it without --load-in-4bit")
    other = [name for name in heal_names(recipe.heal) if name != "qlora"]
    if other:
        raise ConfigError(f"--load-in-4bit heals with qlora (or none): --heal {other[0]} changes 16-bit weights, "
                          "which a 4-bit model does not have")
    if uses_metric(recipe) and recipe.metric_name == AUTO:
        raise ConfigError("--metric auto judges its candidates with a closed-form healer on 16-bit weights; with "
                          "--load-in-4bit name a metric (angular, the default here, bi, cosine, ...)")
    if recipe.rounds > 1:
        raise ConfigError("--rounds with --load-in-4bit would stack one unmerged adapter per round; use one round")
    if recipe.offload:
        raise ConfigError("--offload and --load-in-4bit are two ways to score a model larger than memory; give one")
    unwritable = [entry.name for entry in formats_of(recipe) if "4bit" not in entry.capabilities]
    if unwritable:
        raise ConfigError(f"--load-in-4bit writes safetensors, not {unwritable[0]}; convert the written folder in a "
                          f"second run (hf-layerprune prune DIR --layers ... --format {unwritable[0]})")
    check_available()


def check_4bit_source(recipe: Recipe, source: Source, files: list[str] | None = None) -> None:
    """The 4-bit route writes its output from the source's safetensors shards: a GGUF or pickle source has none."""
    if not recipe.load_in_4bit:
        return
    if source.kind == "gguf":
        raise ConfigError("--load-in-4bit reads a safetensors checkpoint; a .gguf model is already quantized: cut it "
                          "without --load-in-4bit")
    names = files if files is not None else [p.name for p in source.path.glob("*")] if source.path else []
    if not any(str(name).endswith(".safetensors") for name in names):
        raise ConfigError(f"--load-in-4bit writes the output from safetensors shards and {source.name} has none")


def check_shard_size(text: str) -> None:
    try:
        if parse_size(text) < 1:
            raise ValueError
    except (ValueError, TypeError, LayerPruneError):
        raise ConfigError(f"cannot read --max-shard-size {text!r}: give a size like 5GB or 500MB") from None


def source_config(source: Source, token: str | None = None, trust_remote_code: bool = False):
    """The source's config alone (no weights): checked before any heavy work."""
    from transformers import AutoConfig

    kwargs = {"gguf_file": source.gguf_file} if source.kind == "gguf" else {}
    if source.kind == "dir" and (source.path / "config.json").is_file():  # before transformers builds per-layer lists
        check_config_layer_count(source.path)
    try:
        config = AutoConfig.from_pretrained(source.pretrained_id, revision=source.revision, token=token,
                                            trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise loading_error(exc, f"could not read the config of {source.name}", source.name, trust_remote_code) from None
    except RecursionError:
        raise CheckpointError(f"could not read the config of {source.name}: its JSON is nested too deeply") from None
    get_architecture(config)  # unknown families fail here
    text = config.get_text_config()
    check_layer_count(getattr(text, "num_hidden_layers", None), f"the config of {source.name}: num_hidden_layers")
    return config


def check_source_layers(source: Source, config) -> None:
    """A local safetensors checkpoint holds exactly the layers its config says (checkpoint.check_layer_set)."""
    if source.kind == "dir":
        check_checkpoint_layers(source.path, config, get_architecture(config).key_prefix)


def light_config(source: Source, trust_remote_code: bool = False) -> Any:
    """The source's config: an attribute view of config.json itself when the on-disk cut reads it that way
    (surgery.plain_config, no transformers import), else `source_config`."""
    if source.kind == "dir" and source.path and (source.path / "config.json").is_file():
        check_config_layer_count(source.path)  # bounded and sane before anything builds per-layer lists
    raw = plain_config(source.path) if source.kind == "dir" and source.path else None
    if raw is not None:
        return SimpleNamespace(**raw)
    return source_config(source, trust_remote_code=trust_remote_code)


def check_target_against(recipe: Recipe, num_layers: int) -> None:
    if recipe.target is not None:  # a budget: met by the plan (budget.py), any depth can be asked
        return
    if recipe.protect and recipe.granularity == "block":
        parse_protect(recipe.protect, num_layers)
    if recipe.layers:
        validate_removed(recipe.layers, num_layers)
    elif recipe.granularity == "block" and recipe.drop >= num_layers:
        raise ConfigError(f"--drop {recipe.drop} must be smaller than the number of layers ({num_layers})")
    elif recipe.drop > num_layers:
        raise ConfigError(f"--drop {recipe.drop} is more than the {num_layers} {recipe.granularity} sub-layers")


def planned_num_layers(recipe: Recipe, token: str | None = None) -> int:
    """Depth of the output, known before any work (for the default repo name): from the source config alone."""
    if recipe.target is not None:
        raise ConfigError("with --target the plan chooses the depth after scoring; give --repo-id for the repo name")
    source = resolve_source(recipe.model, recipe.revision, allow_pickle=recipe.allow_pickle)
    if source.kind == "hub":
        hub_files(source, token)
    config = source_config(source, token)
    check_target_against(recipe, config.num_hidden_layers)
    if recipe.granularity != "block":
        return config.num_hidden_layers
    return config.num_hidden_layers - (len(recipe.layers) if recipe.layers else recipe.drop)


def source_paths(source: Source) -> list[Path]:
    """Local paths an output must not overlap: the model folder or GGUF file, and the Hub cache for Hub ids."""
    if source.kind == "gguf":
        return [source.path / source.gguf_file]
    if source.kind == "dir":
        return [source.path]
    return [Path(constants.HF_HUB_CACHE)]


def preflight(recipe: Recipe, source: Source, log: Log) -> dict[str, Any] | None:
    """memory.check_fits for the recipe on its device, from the source's config alone (no weights loaded)."""
    import torch

    config = source_config(source, trust_remote_code=recipe.trust_remote_code)
    device = recipe.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded, stored = element_bytes(recipe, config, source.kind == "gguf")
    try:
        shape = shape_of(config, loaded)
    except Exception as exc:  # a config transformers cannot build on the meta device: no estimate, no refusal
        log(f"No memory estimate: {type(exc).__name__}")
        return None
    if source.kind == "gguf":  # dequantized from the file, which is read whole
        shape.load_extra = (source.path / source.gguf_file).stat().st_size
    elif stored and stored != loaded:  # converted from the checkpoint's dtype: its (mmapped) pages are touched too
        shape.load_extra = shape.parameters * stored
    if recipe.load_in_4bit:  # quantized from the mmapped checkpoint: its pages are resident while it loads (CPU)
        shape.load_extra = 0 if device.startswith("cuda") else shape.parameters * (stored or 2)
    record = check_fits(shape, recipe, device=device)
    log(f"Memory estimate: {record['estimate_bytes'] / GiB:.1f} GiB of {record['budget_bytes'] / GiB:.1f} GiB "
        f"({record['budget_from']})")
    return record
