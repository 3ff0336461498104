"""Check a model folder before trusting it, and load it without running code the user did not ask for.

- ``check_safetensors`` / ``check_weights``: every shard's header parses, every tensor's byte range matches its
  dtype and shape and lies inside the file (a truncated or garbage file is refused with one line, never a
  SafetensorError or OverflowError traceback), and the index lists exactly the tensors the shards hold.
- ``load_checkpoint``: ``from_pretrained`` with ``trust_remote_code`` only when the user asked for it. Our own
  sub-layer export (DeciLM / Nemotron-NAS) is loaded with the classes shipped in this package, after checking that
  the folder's ``.py`` files are byte-identical to them and that ``auto_map`` names only those local modules; the
  folder's own code never runs.
- ``probe``: the folder loads and a forward pass on a few fixed token ids gives finite logits; the logits are kept
  so that a pushed copy can be compared with them later without loading the local model again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_layerprune.runtime.errors import CheckpointError, ConfigError, LayerPruneError
from hf_layerprune.recipe import MAX_LAYERS  # no decoder has more; a config asking for more is refused before any work

SAFE_INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*?\.)?layers)\.(?P<idx>\d+)\.(?P<rest>.+)$")
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8, "F4": 0.5, "F6_E2M3": 0.75,
               "F6_E3M2": 0.75}
DECILM_MODULES = {"AutoConfig": ("configuration_decilm", "DeciLMConfig"),
                  "AutoModelForCausalLM": ("modeling_decilm", "DeciLMForCausalLM")}


def check_safetensors(path: Path) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors file after checking the file is whole; CheckpointError otherwise."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw)
            if length > min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} does not fit in the {size}-byte file")
            header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        for name, entry in tensors.items():
            start, stop = entry["data_offsets"]
            if not all(is_count(d) for d in entry["shape"]) or not is_count(start) or not is_count(stop):
                raise ValueError(f"tensor {name} has a shape or offset that is not a non-negative integer "
                                 f"({entry['shape']}, {entry['data_offsets']})")
            numel = math.prod(entry["shape"])
            if not 0 <= start <= stop or (stop - start) != math.ceil(numel * DTYPE_BYTES[entry["dtype"]]):
                raise ValueError(f"tensor {name} has a byte range that does not match its dtype and shape")
            end = max(end, stop)
        if 8 + length + end != size:
            raise ValueError(f"the data should end at byte {8 + length + end} but the file has {size} bytes")
    except RecursionError:
        raise CheckpointError(f"{path} is not a valid safetensors file: its header is nested too deeply") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is truncated or not a valid safetensors file: {exc}") from None
    return tensors


def is_count(value: Any) -> bool:
    """A non-negative integer (a dimension, an offset, a layer count); bool is not one."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def spans(indices: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2, 5"."""
    out: list[str] = []
    for i in sorted(indices):
        if out and i == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out) or "none"


def check_layer_count(value: Any, what: str) -> int:
    """A config's layer count is an integer from 1 to MAX_LAYERS; one line naming the field otherwise."""
    if not is_count(value) or value < 1:
        raise CheckpointError(f"{what} is {value!r}, not a positive integer")
    if value > MAX_LAYERS:
        raise CheckpointError(f"{what} is {value}, more than the {MAX_LAYERS} layers any model has")
    return value


def check_layer_set(present: set[int], num_layers: int, what: str, count_name: str, extra: int = 0) -> None:
    """The layer indices in the tensor names are exactly 0..num_layers-1 (plus `extra` trailing ones, e.g.
    multi-token-prediction layers a checkpoint stores after the decoder's)."""
    expected = set(range(num_layers))
    if present == expected or (extra and expected <= present <= set(range(num_layers + extra))):
        return
    raise CheckpointError(f"{what}: {count_name} says {num_layers} layers (0-{num_layers - 1}) but the weights "
                          f"hold layers {spans(present)}; the config and the weights disagree")


def check_config_layer_count(directory: Path) -> None:
    """The raw layer count of `directory/config.json` (and its text_config), read before transformers builds
    per-layer lists from it (a count of 10**12 would hang there)."""
    raw = read_json(directory / "config.json")
    for holder in (raw, raw.get("text_config")):
        if isinstance(holder, dict) and "num_hidden_layers" in holder:
            check_layer_count(holder["num_hidden_layers"], f"{directory / 'config.json'}: num_hidden_layers")


def layer_index(key: str, layer_prefix: str) -> int | None:
    """The decoder-layer index of a checkpoint key (`model.layers.3.mlp...` -> 3), None for other keys."""
    m = LAYER_KEY.match(key)
    if not m or not (layer_prefix.endswith(m["prefix"] + ".") or (m["prefix"] + ".").endswith(layer_prefix)):
        return None
    return int(m["idx"])


def check_checkpoint_layers(directory: Path, config: Any, layer_prefix: str) -> None:
    """Before any cut: the safetensors of `directory` hold exactly the config's layers (check_layer_set)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return
    names = [name for path in files for name in check_safetensors(path)]
    present = {i for i in (layer_index(n, layer_prefix) for n in names) if i is not None}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    extra = getattr(text, "num_nextn_predict_layers", 0) or 0
    check_layer_set(present, text.num_hidden_layers, str(directory), "config.json's num_hidden_layers",
                    extra if is_count(extra) else 0)


def check_saved(directory: Path) -> None:
    """The safetensors format's verifier: config.json is JSON and every shard (and the index) is whole."""
    read_json(Path(directory) / "config.json")
    check_weights(Path(directory))


def check_weights(directory: Path) -> list[Path]:
    """Check every safetensors file of `directory` and its index; return the weight files."""
    index = directory / SAFE_INDEX
    files = sorted(directory.glob("*.safetensors"))
    held = {path.name: set(check_safetensors(path)) for path in files}
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        absent = sorted({s for s in weight_map.values() if s not in held})
        if absent:
            raise CheckpointError(f"{directory} lacks the weight shards {', '.join(absent)} listed in {index.name}")
        for shard, names in held.items():
            listed = {k for k, v in weight_map.items() if v == shard}
            if listed - names or names - listed:
                odd = sorted(listed ^ names)[:3]
                raise CheckpointError(f"{index.name} and {shard} disagree about the tensors {odd}")
    return files


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; CheckpointError (one line) when unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"cannot read {path}: its JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def link_roots(folder: Path) -> list[Path]:
    """Where a link in `folder` may point: inside it, or (a Hub snapshot) into its repo's blobs."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append((folder.parent.parent / "blobs").resolve())
    return roots


def check_link(path: Path, folder: Path) -> None:
    """A symbolic link under `folder` must resolve inside it (or the Hub cache's blobs); never follow one out."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if not any(target == root or root in target.parents for root in link_roots(folder)):
        raise CheckpointError(f"{path} is a symbolic link to {target}, outside {folder}; copy the file into the "
                              "folder or remove the link")


def check_links(folder: Path) -> None:
    """Every symbolic link under `folder` (check_link)."""
    for path in folder.rglob("*"):
        check_link(path, folder)


# --- loading without running a checkpoint's code ------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_our_decilm(directory: Path) -> bool:
    """True when the folder's remote code is exactly our DeciLM files and nothing else (see module docstring)."""
    from hf_layerprune.surgery.decilm import __file__ as package_init

    config = read_json(directory / "config.json")
    auto_map = config.get("auto_map")
    if not auto_map:
        return False
    ours = Path(package_init).parent
    wanted = {f"{module}.{cls}" for module, cls in DECILM_MODULES.values()}
    if not isinstance(auto_map, dict) or not all(isinstance(v, str) for v in auto_map.values()) \
            or set(auto_map.values()) - wanted:
        return False
    local = {p.name for p in directory.glob("*.py")}
    expected = {f"{module}.py" for module, _ in DECILM_MODULES.values()}
    return local == expected and all(sha256(directory / name) == sha256(ours / name) for name in expected)


def loading_error(exc: BaseException, what: str, label: str, trust_remote_code: bool) -> LayerPruneError:
    """One line for a failed from_pretrained; a model that needs its own code says how to allow it."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if not trust_remote_code and ("trust_remote_code" in str(exc) or "custom code" in str(exc)):
        return needs_code_error(label)
    return CheckpointError(f"{what}: {text}")


def needs_code_error(label: str) -> ConfigError:
    return ConfigError(f"{label} needs code of its own (auto_map) to load; pass --trust-remote-code only if "
                       "you have read that code and trust it")


def _carried(reference: Any, folder: Path) -> bool:
    """An auto_map entry (a "module.Class" string, or a list of them / None for tokenizers) whose code the folder
    holds; a reference to another repo's code ("owner/repo--module.Class") is not carried."""
    refs = reference if isinstance(reference, list) else [reference]
    return all(ref is None or (isinstance(ref, str) and "--" not in ref and "." in ref
                               and (folder / f"{ref.rsplit('.', 1)[0]}.py").is_file()) for ref in refs)


def drop_dangling_auto_map(folder: Path) -> list[str]:
    """Remove the auto_map entries of an output's config.json / tokenizer_config.json whose code the output does
    not carry (outputs copy no ``.py`` but our DeciLM's): a dangling or third-party reference would either fail to
    load or fetch someone else's code. Returns "file:key" of each entry removed."""
    dropped = []
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = read_json(path)
        auto_map = data.get("auto_map")
        if auto_map is None:
            continue
        kept = {k: v for k, v in auto_map.items() if _carried(v, folder)} if isinstance(auto_map, dict) else {}
        gone = sorted(set(auto_map) - set(kept)) if isinstance(auto_map, dict) else ["auto_map"]
        if not gone:
            continue
        if kept:
            data["auto_map"] = kept
        else:
            del data["auto_map"]
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")  # in a staging folder
        dropped += [f"{name}:{key}" for key in gone]
    return dropped


def remote_code(directory: Path) -> dict[str, Any] | None:
    """The config's auto_map when the folder asks for code of its own (or of another repo), else None."""
    config = read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    return config.get("auto_map") or None


def load_checkpoint(path: Path, *, dtype: Any = "auto", trust_remote_code: bool = False, label: str | None = None):
    """Load a local folder for inference. Refuses missing or unexpected keys (the config and weights disagree)."""
    from transformers import AutoModelForCausalLM

    label = label or str(path)
    try:
        if is_our_decilm(path):
            from hf_layerprune.surgery.decilm import DeciLMConfig, DeciLMForCausalLM

            config = DeciLMConfig.from_pretrained(path)
            model, info = DeciLMForCausalLM.from_pretrained(path, config=config, dtype=dtype, output_loading_info=True)
        else:
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True,
                                                               trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise loading_error(exc, f"transformers cannot load {label}", label, trust_remote_code) from None
    if info["missing_keys"] or info["unexpected_keys"]:
        raise CheckpointError(f"{label}: weights do not match the config (missing {sorted(info['missing_keys'])[:3]}, "
                              f"unexpected {sorted(info['unexpected_keys'])[:3]})")
    return model.eval()


# --- probing ------------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """Logits of a model on fixed token ids: what a published copy must reproduce."""

    ids: Any  # LongTensor [batch, length]
    logits: Any  # float32 tensor
    dtype: Any  # the dtype the model was loaded in


def probe_ids(vocab_size: int, batch: int = 2, length: int = 12):
    import torch

    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def probe_model(model, ids=None) -> Probe:
    """The model's logits on `ids` (default: `probe_ids` for its vocabulary)."""
    import torch

    param = next(model.parameters())
    if ids is None:
        ids = probe_ids(model.config.get_text_config().vocab_size)
    with torch.no_grad():
        logits = model(ids.to(param.device)).logits.float().cpu()
    if not torch.isfinite(logits).all():
        raise CheckpointError("the model's logits are not finite (NaN or inf) on a probe input")
    return Probe(ids.cpu(), logits, param.dtype)


def probe(directory: Path, *, trust_remote_code: bool = False) -> Probe:
    """Check the folder's weights, load it and run a forward pass (see the module docstring)."""
    check_weights(directory)
    model = load_checkpoint(directory, dtype="auto", trust_remote_code=trust_remote_code)
    try:
        return probe_model(model)
    finally:
        del model
