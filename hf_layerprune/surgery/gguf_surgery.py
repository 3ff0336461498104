"""Remove decoder blocks from a GGUF file without touching the kept tensors' quantized bytes.

`prune_gguf(src, dst, removed)` scans the source's header (memory-mapped, see `read_header`), writes the
metadata entries it does not change as their raw source bytes, the changed ones and the tensor table anew, then
copies each kept tensor's bytes from the source file in the kernel (byte_copy.py; by chunks where it cannot: peak
memory about one chunk, not one model). What changes:

- tensors `blk.<i>.*` of removed blocks are dropped, the others renumbered `blk.<new i>.*`;
- `<arch>.block_count` becomes the number of kept blocks;
- every array under the `<arch>.` namespace whose length equals the old block count is a per-layer setting
  (head counts, KV head counts, feed-forward lengths, sliding-window flags, per-layer RoPE ...) and is sliced
  to the kept blocks, in order;
- `general.*` says what the file now is (gguf_metadata.py): size label from the kept tensors, a `-pruned-<N>L`
  name and finetune, the source as `general.base_model.0`, the card's licence and tags;
- nothing else: tokenizer, chat template, quantization version and the alignment are copied as they were.

Architectures whose llama.cpp loader derives a layer's kind from its index with a fixed period (gemma2's
alternating sliding window, ...) are refused unless every kept layer keeps its phase.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from hf_layerprune.surgery.checkpoint import check_layer_count, check_layer_set
from hf_layerprune.surgery.byte_copy import copy_range, write_all
from hf_layerprune.runtime.cache import FileIdentity, FileResults, file_identity
from hf_layerprune.runtime.errors import CheckpointError, ConfigError, StageError, UnsupportedModel

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")
# llama.cpp sets these layer patterns from the index (hparams.set_swa_pattern / n_no_rope_layer_step), not from
# metadata arrays: a cut that shifts a kept layer's phase would silently change its attention kind.
INDEX_PERIODS = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "llama4": 4, "gpt-oss": 2, "exaone4": 4}
# Arrays of a fixed length that can equal the block count by chance (M-RoPE's 4 sections on a 4-block model).
FIXED_LENGTH = ("rope.dimension_sections",)


SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass
class Entry:
    """One metadata entry: its raw bytes in the source (`start:end`, key included) and its value type."""

    key: str
    vtype: int
    start: int
    end: int
    sub_type: int | None = None
    count: int = 1
    value_at: int = 0  # offset of the value (after the type, and after sub type + count for arrays)


@dataclass
class TensorInfo:
    name: str
    dims: list[int]  # ggml order, innermost first
    ggml_type: int
    offset: int  # relative to the data section
    n_bytes: int


@dataclass
class GGUFHeader:
    """The parts of a GGUF file that surgery needs, read without decoding the (large) tokenizer arrays.

    `gguf.GGUFReader` builds a numpy view per string of every array (~4.5 s for a 49k-token vocabulary);
    this scan only walks the lengths, and the unchanged entries are later copied as raw bytes."""

    path: Path
    version: int
    entries: dict[str, Entry]
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    buf: Any = None

    def value(self, key: str) -> Any:
        e = self.entries.get(key)
        if e is None:
            return None
        if e.vtype == STRING:
            return _read_string(self.buf, e.value_at)[0]
        if e.vtype in SCALAR:
            return struct.unpack_from("<" + SCALAR[e.vtype], self.buf, e.value_at)[0]
        if e.sub_type in SCALAR:
            return list(struct.unpack_from(f"<{e.count}{SCALAR[e.sub_type]}", self.buf, e.value_at))
        out, pos = [], e.value_at  # array of strings
        for _ in range(e.count):
            s, pos = _read_string(self.buf, pos)
            out.append(s)
        return out

    @property
    def architecture(self) -> str:
        arch = self.value("general.architecture")
        if not arch:
            raise CheckpointError(f"{self.path.name} has no general.architecture")
        return arch

    @property
    def block_count(self) -> int:
        count = self.value(f"{self.architecture}.block_count")
        if count is None:
            raise UnsupportedModel(f"{self.path.name} has no {self.architecture}.block_count; it is not a layered decoder")
        return check_layer_count(count, f"{self.path.name}: {self.architecture}.block_count")

    def check_blocks(self) -> None:
        """Before any cut: the `blk.N` tensors are exactly blocks 0..block_count-1 (plus its MTP blocks)."""
        n = self.block_count
        present = {int(m[1]) for m in (BLOCK_TENSOR.match(t.name) for t in self.tensors) if m}
        check_layer_set(present, n, self.path.name, f"{self.architecture}.block_count")

    def per_layer_keys(self) -> list[str]:
        """Arrays under `<arch>.` whose length is the block count: one value per block."""
        arch, n = self.architecture, self.block_count
        return sorted(k for k, e in self.entries.items() if k.startswith(f"{arch}.") and e.vtype == ARRAY and e.count == n
                      and not k.endswith(FIXED_LENGTH))


def _read_string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace"), pos + 8 + n


def _skip_value(buf, vtype: int, pos: int) -> int:
    if vtype in SCALAR:
        return pos + struct.calcsize(SCALAR[vtype])
    if vtype == STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == ARRAY:
        sub, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if sub in SCALAR:
            return pos + count * struct.calcsize(SCALAR[sub])
        if sub == STRING:  # a vocabulary: one length per string, walked without a call per element
            length = struct.Struct("<Q").unpack_from
            for _ in range(count):
                pos += 8 + length(buf, pos)[0]
            return pos
        for _ in range(count):
            pos = _skip_value(buf, sub, pos)
        return pos
    raise CheckpointError(f"unknown GGUF value type {vtype}")


# scans already made, by file identity (cache.FileResults): one run checks, loads and cuts the same file, and the next
# runs on it (a sweep, another --layers) read the scan from the cache folder (10-20 ms for a 49k-token vocabulary,
# half the time of the cut of a 100 MB file)
SCANS = FileResults("gguf-headers")


def _scanned(buf, key: FileIdentity) -> tuple[int, dict[str, Entry], list[TensorInfo], int]:
    """`_scan(buf)`, or the scan kept for the file's identity when it matches the file's own counts."""
    from gguf import GGUF_MAGIC

    kept = SCANS.get(key)
    if kept is not None:
        try:
            entries = {e[0]: Entry(*e) for e in kept["entries"]}
            tensors = [TensorInfo(*t) for t in kept["tensors"]]
            if struct.unpack_from("<IIQQ", buf, 0) == (GGUF_MAGIC, kept["version"], len(tensors), len(entries)):
                return kept["version"], entries, tensors, kept["end"]
        except (TypeError, KeyError, ValueError, struct.error):
            pass  # not a scan this version wrote: scan again
    version, entries, tensors, end = _scan(buf)
    SCANS.put(key, {"version": version, "end": end, "entries": [list(vars(e).values()) for e in entries.values()],
                    "tensors": [list(vars(t).values()) for t in tensors]})
    return version, entries, tensors, end


def read_header(path: str | Path) -> GGUFHeader:
    """Scan a GGUF file's metadata and tensor table (memory-mapped; values decoded on demand)."""
    from gguf import GGUF_DEFAULT_ALIGNMENT

    path = Path(path)
    try:
        f = open(path, "rb")
        key = file_identity(path)
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        f.close()
        version, entries, tensors, pos = _scanned(buf, key)
    except (ValueError, OSError, struct.error, KeyError, OverflowError, IndexError) as exc:
        raise CheckpointError(f"{path} is not a readable GGUF file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    header = GGUFHeader(path, version, entries, tensors, GGUF_DEFAULT_ALIGNMENT, 0, buf)
    header.alignment = int(header.value("general.alignment") or GGUF_DEFAULT_ALIGNMENT)
    header.data_start = -(-pos // header.alignment) * header.alignment
    end = max((header.data_start + t.offset + t.n_bytes for t in tensors), default=header.data_start)
    if end > len(buf):
        raise CheckpointError(f"{path} ends inside its tensor data (truncated download?)")
    return header


def _scan(buf) -> tuple[int, dict[str, Entry], list[TensorInfo], int]:
    """(version, metadata entries, tensor table, end of the tensor table) of a mapped GGUF file."""
    from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType

    magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
    if magic != GGUF_MAGIC or version < 2:
        raise ValueError("not a GGUF v2/v3 file")
    pos, entries = 24, {}
    for _ in range(n_kv):
        start = pos
        key, pos = _read_string(buf, pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        entry = Entry(key, vtype, start, 0, value_at=pos)
        if vtype == ARRAY:
            entry.sub_type, entry.count = struct.unpack_from("<IQ", buf, pos)
            entry.value_at = pos + 12
        pos = _skip_value(buf, vtype, pos)
        entry.end = pos
        entries[key] = entry
    tensors = []
    for _ in range(n_tensors):
        name, pos = _read_string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        tensors.append(TensorInfo(name, dims, ggml_type, offset, math.prod(dims) * type_size // block))
    return version, entries, tensors, pos


def check_layer_phase(arch: str, kept: list[int]) -> None:
    period = INDEX_PERIODS.get(arch)
    if period and any(new % period != old % period for new, old in enumerate(kept)):
        raise ConfigError(
            f"llama.cpp derives {arch}'s layer kinds from the layer index (period {period}); this cut shifts kept "
            f"layers out of phase, so the GGUF output would change them. Remove layers in runs of {period}, or use "
            "--format safetensors"
        )


def kept_blocks(removed: Iterable[int], num_blocks: int) -> list[int]:
    removed = set(removed)
    if not removed or min(removed) < 0 or max(removed) >= num_blocks:
        raise ConfigError(f"layers to remove must be within 0..{num_blocks - 1}")
    kept = [i for i in range(num_blocks) if i not in removed]
    if not kept:
        raise ConfigError("cannot remove every layer")
    return kept


def renamed(name: str, new_index: dict[int, int]) -> str | None:
    """`blk.7.attn_q.weight` -> `blk.<new>.attn_q.weight`, None for a removed block; other names unchanged."""
    match = BLOCK_TENSOR.match(name)
    if not match:
        return name
    new = new_index.get(int(match[1]))
    return None if new is None else f"blk.{new}.{match[2]}"


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_new(key: str, value: Any) -> bytes:
    """A new `general.*` entry: a string, a u32 count or an array of strings (as GGUFWriter writes them)."""
    if isinstance(value, list):
        return _pack_entry(Entry(key, ARRAY, 0, 0, sub_type=STRING), value)
    return _pack_entry(Entry(key, 4 if isinstance(value, int) else STRING, 0, 0), value)


def _pack_entry(e: Entry, value: Any) -> bytes:
    """A changed entry (the block count, a sliced per-layer array), in its source value type."""
    out = _pack_string(e.key) + struct.pack("<I", e.vtype)
    if e.vtype in SCALAR:
        return out + struct.pack("<" + SCALAR[e.vtype], value)
    if e.vtype == STRING:
        return out + _pack_string(value)
    out += struct.pack("<IQ", e.sub_type, len(value))
    if e.sub_type in SCALAR:
        return out + struct.pack(f"<{len(value)}{SCALAR[e.sub_type]}", *value)
    return out + b"".join(_pack_string(v) for v in value)


def _add(steps: list[tuple], step: tuple) -> None:
    """Append a step of the output: ("bytes", new bytes), ("copy", source offset, length) or ("tensor", name) for a
    replaced tensor; new bytes join the new bytes before them, and a copy the copy of the source range just before."""
    last = steps[-1] if steps else (None,)
    if step[0] == last[0] == "bytes":
        last[1].extend(step[1])
    elif step[0] == last[0] == "copy" and last[1] + last[2] == step[1]:
        steps[-1] = ("copy", last[1], last[2] + step[2])
    else:
        steps.append(("bytes", bytearray(step[1])) if step[0] == "bytes" else step)


def _data_steps(fin: int, items: list[tuple[str, int, int, bool]], align: int) -> list[tuple]:
    """The output's data section, tensor after tensor (`items`: name, source offset, bytes, replaced), as steps
    (`_add`): tensors that lie back to back in the source, with its zero padding between them, are one copy; padding
    the source does not hold as zeros is new bytes."""
    steps: list[tuple] = []
    for name, start, size, replaced in items:
        gap = -size % align
        _add(steps, ("tensor", name) if replaced else ("copy", start, size))
        if gap and steps[-1][0] == "copy" and os.pread(fin, gap, start + size) == bytes(gap):
            _add(steps, ("copy", start + size, gap))  # the source's own padding, copied along
        elif gap:
            _add(steps, ("bytes", bytes(gap)))
    return steps


def prune_gguf(src: str | Path, dst: str | Path, removed: Iterable[int], *, replace: dict | None = None,
               card=None) -> dict:
    """Write `dst`: `src` without the blocks in `removed`. `replace` maps an output tensor name to
    (numpy array in the tensor's stored layout, GGMLQuantizationType) written instead of the source bytes
    (re-quantized healed tensors). `card`: a `gguf_metadata.CardFields` (base model, licence, tags) for the
    `general.*` keys; without it the source file is named as the base. Returns what was done, for the report."""
    from hf_layerprune.surgery import gguf_metadata
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType

    src, dst = Path(src), Path(dst)
    header = read_header(src)
    header.check_blocks()
    arch, num_blocks = header.architecture, header.block_count
    if "split.count" in header.entries and int(header.value("split.count") or 1) > 1:
        raise UnsupportedModel("split GGUF files are not supported; merge them first (llama-gguf-split --merge)")
    kept = kept_blocks(removed, num_blocks)
    check_layer_phase(arch, kept)
    nextn = int(header.value(f"{arch}.nextn_predict_layers") or 0)
    if nextn and max(set(range(num_blocks)) - set(kept)) >= num_blocks - nextn:
        raise ConfigError(f"the last {nextn} blocks of this {arch} file are multi-token-prediction layers "
                              f"({arch}.nextn_predict_layers); remove layers below {num_blocks - nextn}")
    new_index = {old: new for new, old in enumerate(kept)}
    replace = dict(replace or {})
    tensors = [(renamed(t.name, new_index), t) for t in header.tensors]
    tensors = [(name, t) for name, t in tensors if name is not None]
    unknown = set(replace) - {name for name, _ in tensors}
    if unknown:
        raise StageError(f"no tensor {sorted(unknown)[0]} in the pruned GGUF")
    sliced = header.per_layer_keys()
    align = header.alignment
    source_general = {k: header.value(k) for k, e in header.entries.items() if k.startswith("general.")}
    shapes = [(name, tuple(reversed(t.dims))) for name, t in tensors]
    general = gguf_metadata.pruned_general(source_general, shapes, len(kept),
                                           card or gguf_metadata.CardFields(base=src.name))
    kept_keys = {k for k in header.entries if not gguf_metadata.replaced(k, general)}
    pending = dict(general)

    def pad(n: int) -> int:
        return -(-n // align) * align

    kv: list[tuple] = []  # the metadata as steps: the entries kept as they are copied from the source
    for key, e in header.entries.items():
        if key not in kept_keys:
            if key in pending:  # rewritten where the source had it
                _add(kv, ("bytes", _pack_new(key, pending.pop(key))))
            continue
        if key == f"{arch}.block_count":
            _add(kv, ("bytes", _pack_entry(e, len(kept))))
        elif key in sliced:
            values = header.value(key)
            _add(kv, ("bytes", _pack_entry(e, [values[i] for i in kept])))
        else:
            _add(kv, ("copy", e.start, e.end - e.start))
    for key, value in pending.items():  # keys the source did not have
        _add(kv, ("bytes", _pack_new(key, value)))
    table, offset, sizes = bytearray(), 0, []
    for name, t in tensors:
        ggml_type, size = t.ggml_type, t.n_bytes
        if name in replace:
            data, qtype = replace[name]
            ggml_type, size = int(qtype), data.nbytes
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            if math.prod(t.dims) * type_size // block != size:
                raise StageError(f"replacement for {name} has {size} bytes, not a {t.dims} {qtype.name} tensor")
        table += _pack_string(name) + struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims)
        table += struct.pack("<IQ", ggml_type, offset)
        offset += pad(size)
        sizes.append(size)
    prefix = struct.pack("<IIQQ", GGUF_MAGIC, header.version, len(tensors), len(kept_keys) + len(general))
    length = len(prefix) + sum(len(step[1]) if step[0] == "bytes" else step[2] for step in kv) + len(table)
    steps: list[tuple] = []
    for step in [("bytes", prefix), *kv, ("bytes", table), ("bytes", bytes(pad(length) - length))]:
        _add(steps, step)
    fin = os.open(src, os.O_RDONLY)
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        items = [(name, header.data_start + t.offset, size, name in replace) for (name, t), size in zip(tensors, sizes)]
        for step, *args in steps + _data_steps(fin, items, align):
            if step == "copy":  # unchanged metadata and the quantized blocks as they are, copied in the kernel
                copy_range(fin, out, *args, what=src.name)
            elif step == "tensor":  # a re-quantized healed tensor
                write_all(out, memoryview(np.ascontiguousarray(replace[args[0]][0])).cast("B"))
            else:
                write_all(out, args[0])
    finally:
        os.close(out)
        os.close(fin)
    header.buf.close()
    return {
        "file": dst.name,
        "architecture": arch,
        "kept_layers": kept,
        "per_layer_keys": sliced,
        "tensors": len(tensors),
        "replaced_tensors": sorted(replace),
        "general": general,
    }


def gguf_output_name(source_file: str | Path, num_layers: int) -> str:
    """`<name>-pruned-<N>L.gguf` from the source file name."""
    stem = re.sub(r"\.gguf$", "", Path(source_file).name, flags=re.IGNORECASE)
    return f"{stem}-pruned-{num_layers}L.gguf"
