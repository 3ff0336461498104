"""Resolve a model source (Hub id + revision, local directory, or .gguf file) and load it.

- ``resolve_source`` classifies the user's MODEL argument and checks it exists, without loading weights.
- ``local_checkpoint`` gives a local safetensors directory for the on-disk streaming path (downloads a Hub
  snapshot with ``snapshot_download`` when needed).
- ``load_model`` returns ``(model, tokenizer)`` through ``AutoModelForCausalLM.from_pretrained``
  (``gguf_file=`` for GGUF, which transformers dequantizes; needs the ``gguf`` package).

Pickle ``.bin`` checkpoints are refused unless ``allow_pickle=True``: unpickling runs arbitrary code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_layerprune.runtime.distributed import world
from hf_layerprune.runtime.errors import CheckpointError, ConfigError, LayerPruneError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class Source:
    """Where a model comes from. `kind` is "dir", "gguf" or "hub"."""

    kind: str
    name: str  # as the user gave it (used in the card as base_model)
    path: Path | None = None  # local directory (dir, gguf: its folder)
    gguf_file: str | None = None
    revision: str | None = None

    @property
    def pretrained_id(self) -> str:
        return str(self.path) if self.path is not None else self.name


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _looks_local(name: str) -> bool:
    """A name that cannot be a Hub repo id (``org/name``) is a path the user expected to exist."""
    return not _HUB_ID.match(name) or name.endswith((".gguf", ".safetensors", ".bin"))


def resolve_source(name: str, revision: str | None = None, *, allow_pickle: bool = False,
                   check_files: bool = True) -> Source:
    """Classify MODEL. With `check_files`, a local checkpoint's weight files are checked whole (headers and sizes,
    `checkpoint.check_weights`); the pipeline defers that until the options that need only the config passed."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        _check_gguf(path)
        return Source("gguf", name, path.parent, path.name, revision)
    if path.is_dir():
        _check_weights(path, allow_pickle, name, check_files)
        return Source("dir", name, path, None, revision)
    if path.exists():
        raise ConfigError(f"{name} is a file but not a .gguf model; give a model directory, a .gguf file or a Hub id")
    if _looks_local(name):
        raise ConfigError(f"model path not found: {name}")
    return Source("hub", name, None, None, revision)


META_FILES = ("params.json",)  # Meta's original Llama format: params.json + consolidated.NN.pth, no config.json


def is_meta_format(files: list[str]) -> bool:
    names = [Path(f).name for f in files]
    return "config.json" not in names and (any(n in META_FILES for n in names)
                                           or any(n.startswith("consolidated.") and n.endswith(".pth") for n in names))


def _check_weights(directory: Path, allow_pickle: bool, name: str, check_files: bool = True) -> None:
    if is_meta_format([p.name for p in directory.iterdir()]):
        raise CheckpointError(f"{name} is in Meta's original format (params.json, consolidated.*.pth), which "
                              "transformers does not load; use the converted -hf checkpoint (e.g. meta-llama/Llama-2-7b-hf) "
                              "or convert it with transformers' convert_llama_weights_to_hf.py")
    if not (directory / "config.json").exists() and not list(directory.glob("*.gguf")):
        raise CheckpointError(f"{name} has no config.json; is it a transformers model directory?")
    has_safetensors = any(directory.glob("*.safetensors"))
    has_pickle = any(p.suffix in PICKLE_SUFFIXES for p in directory.iterdir())
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ConfigError(
            f"{name} holds only pickle (.bin) weights, which can run code when loaded; pass --allow-pickle if you trust it"
        )
    if not has_safetensors and not has_pickle:
        raise CheckpointError(f"no weights (*.safetensors) found in {name}")
    if has_safetensors and check_files:
        from hf_layerprune.surgery.checkpoint import check_weights

        check_weights(directory)  # truncated or garbage shards fail here, in one line


def _check_gguf(path: Path) -> None:
    """The file parses as GGUF (header, metadata, tensor table, data within the file); the scan maps the file and
    walks the metadata lengths only (gguf_surgery.read_header: 0.1 s where gguf's GGUFReader takes seconds)."""
    from hf_layerprune.surgery.gguf_surgery import read_header

    try:
        read_header(path).buf.close()
    except LayerPruneError as exc:
        text = str(exc).replace(str(path), "the file")
        raise CheckpointError(f"{path.name} is not a valid GGUF file: {text}") from None
    from hf_layerprune.surgery.gguf_surgery import read_header

    read_header(path).check_blocks()  # block_count is a count and the file holds exactly those blocks


def check_device(device: str | None) -> None:
    """`--device` names a device torch knows and this machine has (before anything is loaded)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown --device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine")


def torch_dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ConfigError(f"unknown dtype {name!r}; use one of auto, float32, bfloat16, float16")
    return table[name]


def code_folder(source: Source) -> Path | None:
    """Where the source's config.json lies locally: its folder, or for a Hub id the cached snapshot of config.json
    and the `.py` files its `auto_map` names (nothing else is downloaded); None when there is no config."""
    if source.kind == "dir":
        return source.path if (source.path / "config.json").is_file() else None
    if source.kind != "hub":
        return None
    from huggingface_hub import hf_hub_download

    from hf_layerprune.surgery.checkpoint import read_json

    try:
        folder = Path(hf_hub_download(source.name, "config.json", revision=source.revision)).parent
        modules = {str(ref).split("--")[-1].split(".")[0] for ref in (read_json(folder / "config.json").get("auto_map") or {}).values()}
        for module in sorted(modules):
            hf_hub_download(source.name, f"{module}.py", revision=source.revision)
    except Exception:  # noqa: BLE001 - unreachable or odd repos: from_pretrained will say what is wrong
        return None
    return folder


def own_decilm(source: Source) -> bool:
    """A folder or Hub repo holding our own DeciLM (sub-layer) export, whose code is the package's (checkpoint.py)."""
    folder = code_folder(source)
    if folder is None:
        return False
    from hf_layerprune.surgery.checkpoint import is_our_decilm

    return is_our_decilm(folder)


def check_loadable(source: Source, trust_remote_code: bool = False) -> None:
    """Refuse, before any work, a model that needs code of its own which is not our DeciLM export."""
    from hf_layerprune.surgery.checkpoint import needs_code_error, remote_code

    folder = None if trust_remote_code else code_folder(source)
    if folder is not None and remote_code(folder) and not own_decilm(source):
        raise needs_code_error(source.name)


def load_model(
    source: Source | str,
    *,
    revision: str | None = None,
    dtype: str | None = "auto",
    device: str | None = None,
    allow_pickle: bool = False,
    token: str | None = None,
    need_tokenizer: bool = True,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``; the tokenizer is None when the checkpoint has none and it is not needed.
    ``load_in_4bit``: NF4 with double quantization (quantized.py), on `device` (default: CUDA when there is one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, str):
        source = resolve_source(source, revision, allow_pickle=allow_pickle)
    check_device(device)
    # never None: transformers then decides itself, and may ask on a terminal; code runs only when the user asked
    kwargs: dict[str, Any] = {"revision": source.revision, "token": token, "trust_remote_code": trust_remote_code}
    if source.kind == "gguf":
        from transformers import GgufConfig

        kwargs["gguf_file"] = source.gguf_file
        # Unpack into a plain dense model: GGUF-block weights are not serializable and cannot be trained.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    want = torch_dtype(dtype)
    if device_map:
        kwargs["device_map"] = device_map
    if device is None and not device_map and torch.cuda.is_available():  # the GPU when there is one (this rank's)
        device = f"cuda:{world().local_rank % torch.cuda.device_count()}"
    if source.kind == "gguf" and want == "auto":
        want = torch.float32  # GGUF weights are dequantized; keep full precision unless asked otherwise
    if load_in_4bit:
        from hf_layerprune.surgery import quantized

        want = torch.bfloat16 if want == "auto" else want  # the compute dtype (float32: fast on CPUs without bf16); the output keeps the checkpoint's
        kwargs["quantization_config"] = quantized.config(want)
        if not device_map:  # bitsandbytes places the weights as it quantizes them: no `.to()` afterwards
            kwargs["device_map"] = {"": device or "cpu"}  # `device` is already this rank's GPU when there is one
    model_class, ours = AutoModelForCausalLM, own_decilm(source)
    if ours:  # our sub-layer export: the package's DeciLM classes, never the folder's copy of them (checkpoint.py)
        from hf_layerprune.surgery.decilm import DeciLMConfig, DeciLMForCausalLM

        model_class, kwargs["config"] = DeciLMForCausalLM, DeciLMConfig.from_pretrained(code_folder(source))
        kwargs.pop("trust_remote_code")
    elif source.kind == "dir" and (source.path / "config.json").is_file():  # transformers would fill missing layers
        from transformers import AutoConfig  # with random weights and only warn

        from hf_layerprune.architectures import get_architecture
        from hf_layerprune.surgery.checkpoint import check_checkpoint_layers, check_config_layer_count

        check_config_layer_count(source.path)
        try:
            config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError) as exc:
            from hf_layerprune.surgery.checkpoint import loading_error

            raise loading_error(exc, f"could not read the config of {source.name}", source.name, trust_remote_code) from None
        check_checkpoint_layers(source.path, config, get_architecture(config).key_prefix)
    try:
        model = model_class.from_pretrained(
            source.pretrained_id, dtype=want, use_safetensors=None if allow_pickle else True, **kwargs
        )
    except LayerPruneError:
        raise
    except (OSError, ValueError) as exc:
        from hf_layerprune.surgery.checkpoint import loading_error

        raise loading_error(exc, f"could not load {source.name}", source.name, trust_remote_code) from None
    except Exception as exc:  # transformers' GGUF reader fails in many ways on a file it cannot map
        if source.kind != "gguf":
            raise
        text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise CheckpointError(f"transformers cannot load {source.name}: {type(exc).__name__}: {text}"[:300]) from None
    if load_in_4bit:
        quantized.one_cpu_path(model)
    if not ours:
        from hf_layerprune.architectures import get_architecture

        get_architecture(model.config)  # unknown families fail here, before any work
    tokenizer = None
    try:
        tok_kwargs = {k: v for k, v in kwargs.items() if k != "quantization_config"}
        tokenizer = AutoTokenizer.from_pretrained(source.pretrained_id, **tok_kwargs)
    except Exception as exc:  # tiny test checkpoints have no tokenizer
        if need_tokenizer:
            raise CheckpointError(f"could not load a tokenizer for {source.name}: {type(exc).__name__}") from None
    if device and not device_map and not load_in_4bit:
        model.to(device)
    model.eval()
    return model, tokenizer
