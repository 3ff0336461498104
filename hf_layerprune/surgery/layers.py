"""Exact layer removal, in memory and on disk.

Both paths give the same result: the original model minus the removed decoder layers, renumbered
``0..L'-1``, with every per-layer config field rewritten by the family's Architecture (see
``architectures/base.py``), so that stock transformers loads the output with no missing or unexpected keys.

- ``remove_layers(model, removed)`` edits a loaded model in place (also renumbers each module's
  ``layer_idx``, which the KV cache is indexed by).
- ``prune_checkpoint(src, dst, removed)`` streams a safetensors checkpoint: it reads only the headers, writes
  new headers with renamed keys and copies each kept tensor's bytes straight from the source file, never
  building the model. Peak memory is the copy buffer.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

from hf_layerprune.architectures import ARCHITECTURES, get_architecture
from hf_layerprune.architectures.base import GENERIC_SLICED
from hf_layerprune.surgery.checkpoint import LAYER_KEY, check_checkpoint_layers, check_link, check_layer_count, layer_index
from hf_layerprune.surgery.byte_copy import CHUNK_BYTES, PAGE, copy_range, page_residue, write_all
from hf_layerprune.runtime.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")
# Files of the source checkpoint that the output rewrites itself rather than copies.
NOT_COPIED = {"config.json", "README.md", ".gitattributes", SAFE_INDEX, "pytorch_model.bin.index.json"}


# ----------------------------------------------------------------------------------------------- selection


def validate_removed(removed: Iterable[int], num_layers: int) -> list[int]:
    """Check 0-based indices to remove; return them sorted. Raises ConfigError on bad input."""
    removed = list(removed)
    if not removed:
        raise ConfigError("no layers to remove: give --drop N (N >= 1) or --layers with at least one index")
    seen = set()
    for i in removed:
        if not isinstance(i, int) or isinstance(i, bool):
            raise ConfigError(f"layer index {i!r} is not an integer")
        if i < 0 or i >= num_layers:
            raise ConfigError(f"layer index {i} is out of range: the model has layers 0..{num_layers - 1}")
        if i in seen:
            raise ConfigError(f"layer index {i} is repeated in --layers")
        seen.add(i)
    if len(removed) >= num_layers:
        raise ConfigError(f"cannot remove all {num_layers} layers: at least one must stay")
    return sorted(removed)


def kept_layers(removed: Iterable[int], num_layers: int) -> list[int]:
    gone = set(removed)
    return [i for i in range(num_layers) if i not in gone]


# ----------------------------------------------------------------------------------------------- config


def config_updates(config: Any, kept: list[int]) -> dict[str, Any]:
    """The per-layer config fields to set so that `config` describes only the `kept` layers (0-based)."""
    arch = get_architecture(config)
    n = config.num_hidden_layers
    updates: dict[str, Any] = dict(arch.expand(config)) if arch.expand else {}
    new_index = {old: new for new, old in enumerate(kept)}

    def current(name: str) -> Any:
        return updates[name] if name in updates else getattr(config, name, None)

    for name in dict.fromkeys((*arch.sliced, *GENERIC_SLICED)):
        value = current(name)
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise CheckpointError(f"config.{name} has {len(value)} entries for {n} layers; refusing to guess")
            updates[name] = [value[i] for i in kept]
    for name in arch.remapped:
        value = current(name)
        if value is not None:
            updates[name] = [new_index[i] for i in value if i in new_index]
    for name in arch.recounted:
        value = current(name)
        if isinstance(value, int) and not isinstance(value, bool):
            updates[name] = sum(1 for i in kept if i < value)
    updates["num_hidden_layers"] = len(kept)
    if getattr(config, "is_heterogeneous", False):  # transformers 5 sparse per-layer overrides, keyed by index
        overrides = config._heterogeneity_spec.per_layer_overrides
        updates["per_layer_config"] = {new_index[i]: v for i, v in overrides.items() if i in new_index}
    return updates


def plain_config(directory: Path) -> dict[str, Any] | None:
    """``config.json`` as a dict when the on-disk cut can rewrite it as JSON, without transformers; else None.

    transformers derives some per-layer fields when a config.json leaves them out (qwen2's and gemma's
    ``layer_types``, the MoE sparse step ...), and slicing needs its value. So the JSON route takes a registered
    ``model_type`` whose every sliced, remapped and recounted field is written out, with no ``expand`` rule and no
    sparse per-layer overrides; anything else is read by ``AutoConfig`` (which imports torch)."""
    try:
        raw = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("model_type") not in ARCHITECTURES:
        return None
    if not isinstance(raw.get("num_hidden_layers"), int) or "per_layer_config" in raw or raw.get("auto_map"):
        return None
    arch = ARCHITECTURES[raw["model_type"]]
    if arch.expand or any(name not in raw for name in (*arch.sliced, *arch.remapped, *arch.recounted)):
        return None
    return raw


def read_config(directory: Path) -> Any:
    """The checkpoint's config: an attribute view of ``config.json`` (``plain_config``), else transformers'."""
    raw = plain_config(directory)
    if raw is not None:
        return SimpleNamespace(**raw)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory)


def write_config(config: Any, kept: list[int], directory: Path) -> None:
    """``config.json`` of the cut: a JSON view (``read_config``) keeps the source's fields and spelling (and its
    ``transformers_version``) with the per-layer fields rewritten; a transformers config is saved by transformers."""
    if isinstance(config, SimpleNamespace):
        data = {**vars(config), **config_updates(config, kept)}
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"  # as transformers' to_json_string writes it
        (Path(directory) / "config.json").write_text(text, encoding="utf-8")
        return
    rewrite_config(config, kept)
    config.save_pretrained(directory)


def ties_embeddings(config: Any) -> bool:
    tied = getattr(config, "tie_word_embeddings", None)
    return get_architecture(config).tied_by_default if tied is None else bool(tied)


def rewrite_config(config: Any, kept: list[int]) -> dict[str, Any]:
    """Apply `config_updates` in place (modules hold references to the config object) and return them."""
    updates = config_updates(config, kept)
    config.num_hidden_layers = updates["num_hidden_layers"]  # first: the other fields are checked against it
    for key, value in updates.items():
        setattr(config, key, value)
    if hasattr(config, "validate"):
        config.validate()
    return updates


# ----------------------------------------------------------------------------------------------- in memory


def remove_layers(model: torch.nn.Module, removed: Iterable[int]) -> torch.nn.Module:
    """Remove decoder layers from a loaded *ForCausalLM in place; renumber `layer_idx`; rewrite the config."""
    import torch

    arch = get_architecture(model.config)
    layers = arch.get_layers(model)
    removed = validate_removed(removed, len(layers))
    kept = kept_layers(removed, len(layers))
    arch.set_layers(model, torch.nn.ModuleList([layers[i] for i in kept]))
    for new_idx, layer in enumerate(arch.get_layers(model)):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    rewrite_config(model.config, kept)
    return model


# ----------------------------------------------------------------------------------------------- on disk


@dataclass
class _Entry:
    key: str  # name in the output
    src_file: Path
    dtype: str
    shape: list[int]
    start: int  # absolute byte offset in src_file
    nbytes: int


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Return (header dict, absolute offset where tensor data starts) without reading tensor data."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return header, 8 + size


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (from its index when sharded)."""
    index = directory / SAFE_INDEX
    if index.exists():
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return [directory / name for name in dict.fromkeys(weight_map.values())]
    if (directory / SAFE_SINGLE).exists():
        return [directory / SAFE_SINGLE]
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    raise CheckpointError(f"no safetensors weights in {directory}")


def rename_layer_key(key: str, layer_prefix: str, new_index: dict[int, int]) -> str | None:
    """New name of a checkpoint key; None when it belongs to a removed layer. Non-layer keys are unchanged."""
    old = layer_index(key, layer_prefix)
    if old is None:
        return key
    m = LAYER_KEY.match(key)
    if old not in new_index:
        return None
    return f"{m['prefix']}.{new_index[old]}.{m['rest']}"


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(size).upper())
    if not m:
        raise ConfigError(f"cannot read size {size!r}; use e.g. 5GB or 500MB")
    unit = (m[2] or "B").replace("IB", "B")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit]
    if "I" in (m[2] or ""):
        scale = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}[unit]
    return int(float(m[1]) * scale)


def prune_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    removed: Iterable[int],
    *,
    max_shard_size: int | str = "5GB",
    copy_buffer: int = CHUNK_BYTES,
) -> dict[str, Any]:
    """Write the pruned checkpoint of safetensors directory `src` into existing empty directory `dst`.

    Returns {"removed_layers", "kept_layers", "num_layers_before", "total_size", "shards"}.
    """
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    arch = get_architecture(config)
    num_layers = check_layer_count(config.num_hidden_layers, "config.json's num_hidden_layers")
    check_checkpoint_layers(src, config, arch.key_prefix)  # before any cut: the weights are what the config says
    removed = validate_removed(removed, num_layers)
    kept = kept_layers(removed, num_layers)
    new_index = {old: new for new, old in enumerate(kept)}

    entries: list[_Entry] = []
    sources = checkpoint_files(src)
    for path in sources:
        header, data_start = read_safetensors_header(path)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            new_key = rename_layer_key(key, arch.key_prefix, new_index)
            if new_key is None:
                continue
            begin, end = info["data_offsets"]
            entries.append(_Entry(new_key, path, info["dtype"], info["shape"], data_start + begin, end - begin))
    names = {e.key for e in entries}
    if ties_embeddings(config) and "lm_head.weight" in names and arch.embed + ".weight" in names:
        entries = [e for e in entries if e.key != "lm_head.weight"]  # as save_pretrained does for tied weights
    shards = _plan_shards(entries, sources, parse_size(max_shard_size))
    names = [SAFE_SINGLE if len(shards) == 1 else f"model-{n:05d}-of-{len(shards):05d}.safetensors"
             for n in range(1, len(shards) + 1)]
    _write_shards([dst / name for name in names], shards, copy_buffer)
    weight_map = {e.key: name for name, shard in zip(names, shards) for e in shard}
    total_size = sum(e.nbytes for e in entries)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    write_config(config, kept, dst)
    copy_side_files(src, dst)
    return {
        "removed_layers": removed,
        "kept_layers": kept,
        "num_layers_before": num_layers,
        "total_size": total_size,
        "shards": len(shards),
    }


SIDE_FOLDERS = ("additional_chat_templates",)  # the only sub-folders transformers reads beside the weights


def side_files(src: Path) -> list[Path]:
    """The files `copy_side_files` copies: tokenizer, chat template, generation config and other non-weight files
    of a checkpoint, at its top level and in SIDE_FOLDERS, never other sub-folders (an earlier output saved inside
    the model folder must not end up inside the new one) and never code (``*.py``: a stock output needs none). A
    symbolic link is followed only into the source folder or the Hub cache's blobs (checkpoint.check_link)."""
    paths = [p for p in src.iterdir() if p.is_file()]
    paths += [p for folder in SIDE_FOLDERS if (src / folder).is_dir() for p in (src / folder).iterdir() if p.is_file()]
    out = []
    for path in sorted(paths):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or path.suffix == ".py":
            continue
        if rel.name in NOT_COPIED or rel.name.endswith(WEIGHT_SUFFIXES):
            continue
        check_link(path, src)
        out.append(path)
    return out


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy `side_files(src)` into `dst` (same relative paths)."""
    for path in side_files(src):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _plan_shards(entries: list[_Entry], sources: list[Path], max_bytes: int) -> list[list[_Entry]]:
    """The output's shards: the kept tensors of each source file in the order they lie there, a new shard at every
    source file and wherever `max_bytes` would be passed. A shard never mixes two source files, so one header
    padding (`_shard_layout`) puts its tensors at their source offsets modulo the page size, and the tensors that
    were adjacent in the source are one copy (the kernel then copies whole pages; shifted copies measured ~1.6x
    slower in the page cache, benchmarks/RESULTS.md). The shards are never larger than the source's."""
    order = {path: i for i, path in enumerate(sources)}
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in sorted(entries, key=lambda e: (order[e.src_file], e.start)):
        last = shards[-1][-1] if shards[-1] else None
        if last is not None and (last.src_file != entry.src_file or size + entry.nbytes > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _shard_layout(entries: list[_Entry]) -> tuple[bytes, list[int]]:
    """The shard's 8-byte length and JSON header, padded with spaces (as safetensors pads it to 8 bytes) so that
    its data starts at `page_residue` modulo PAGE, and each entry's offset in the file."""
    offsets = list(itertools.accumulate((e.nbytes for e in entries), initial=0))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for e, begin, end in zip(entries, offsets, offsets[1:]):
        header[e.key] = {"dtype": e.dtype, "shape": e.shape, "data_offsets": [begin, end]}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    start, residue = 8 + len(raw), page_residue(((e.start, o, e.nbytes) for e, o in zip(entries, offsets)), 8)
    raw += b" " * ((-start % 8) if residue is None else (residue - start) % PAGE)
    head = struct.pack("<Q", len(raw)) + raw
    return head, [len(head) + offset for offset in offsets[:-1]]


def _write_shards(paths: list[Path], shards: list[list[_Entry]], copy_buffer: int) -> None:
    """Write the shards one after the other, as `cp` writes files: the header, then the tensors, each run of tensors
    that lie back to back in the source as one copy. Each source is read front to back, as the provenance hash reads
    it beside the copy, so they share the pages read."""
    inputs: dict[Path, int] = {}
    try:
        for path, shard in zip(paths, shards):
            head, offsets = _shard_layout(shard)
            runs: list[list[int]] = []  # [source offset, bytes, output offset]
            for e, offset in zip(shard, offsets):
                if runs and runs[-1][0] + runs[-1][1] == e.start:
                    runs[-1][1] += e.nbytes
                else:
                    runs.append([e.start, e.nbytes, offset])
            source = shard[0].src_file  # one source file per shard (_plan_shards)
            if source not in inputs:
                inputs[source] = os.open(source, os.O_RDONLY)
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(out, head)
                for start, nbytes, offset in runs:
                    copy_range(inputs[source], out, start, nbytes, out_offset=offset, what=source.name,
                               chunk=copy_buffer)
            finally:
                os.close(out)
    finally:
        for fd in inputs.values():
            os.close(fd)
