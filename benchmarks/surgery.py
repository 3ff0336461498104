"""On-disk surgery vs the peer approach (from_pretrained + delete + save_pretrained), time and peak RSS.

Makes a random Llama-shaped checkpoint on the fly (~1B parameters in bf16 by default), then, each in a fresh
subprocess so that peak RSS is its own:
  copy     copying the kept tensor bytes with shutil (the disk-speed floor),
  stream   hf_layerprune.surgery.prune_checkpoint (headers + byte ranges, no model),
  naive    AutoModelForCausalLM.from_pretrained + del layers + save_pretrained (what peers do; mergekit aside).
Targets: stream <= 1.5x copy time, stream peak RSS <= 1/10 of naive.

    python benchmarks/surgery.py [--hidden 2048 --layers 22 --intermediate 5632 --vocab 32000] [--drop 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch, transformers  # imported before the clock starts, in every mode
from transformers import AutoModelForCausalLM
from hf_layerprune.surgery import checkpoint_files, kept_layers, prune_checkpoint, read_safetensors_header, rename_layer_key

def peak_rss_mb():  # VmHWM is per address space and reset by exec, unlike ru_maxrss
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

mode, src, dst, removed = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
base_rss = peak_rss_mb()
t = time.perf_counter()
if mode == "copy":
    cfg = json.loads((src / "config.json").read_text())
    new_index = {o: n for n, o in enumerate(kept_layers(removed, cfg["num_hidden_layers"]))}
    with open(dst / "kept.bin", "wb") as out:
        for f in checkpoint_files(src):
            header, start = read_safetensors_header(f)
            with open(f, "rb") as fin:
                for key, info in header.items():
                    if key == "__metadata__" or rename_layer_key(key, "model.layers.", new_index) is None:
                        continue
                    a, b = info["data_offsets"]
                    fin.seek(start + a)
                    out.write(fin.read(b - a))
elif mode == "stream":
    prune_checkpoint(src, dst, removed, max_shard_size="2GB")
elif mode == "naive":
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    for i in sorted(removed, reverse=True):
        del model.model.layers[i]
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(model.model.layers)
    model.save_pretrained(dst, max_shard_size="2GB")
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": base_rss}))
"""


def make_checkpoint(path: Path, args) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 256),
        vocab_size=args.vocab,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path, max_shard_size="2GB")
    params = sum(p.numel() for p in model.parameters())
    del model
    return params


def run_child(mode: str, src: Path, dst: Path, removed: list[int]) -> dict:
    dst.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(src), str(dst), json.dumps(removed)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--drop", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3, help="best of N for each timing")
    parser.add_argument("--workdir", default=None, help="where to write the checkpoints (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="surgery-bench-", dir=args.workdir))
    try:
        src = work / "src"
        params = make_checkpoint(src, args)
        size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        removed = list(range(args.layers - 1 - args.drop, args.layers - 1))
        for p in src.glob("*.safetensors"):  # warm the page cache so every mode reads from memory alike
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
        runs: dict[str, list[dict]] = {"copy": [], "stream": [], "naive": []}
        for r in range(args.repeat):  # interleaved, each after a sync, so page-cache state is alike for all
            for mode in runs:
                dst = work / f"{mode}-{r}"
                os.sync()
                runs[mode].append(run_child(mode, src, dst, removed))
                shutil.rmtree(dst)
        results = {mode: min(rs, key=lambda x: x["seconds"]) for mode, rs in runs.items()}
        import torch, transformers  # noqa: E401

        print(f"# on-disk surgery benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores,"
              f" python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"checkpoint: {params / 1e9:.2f}B parameters, {size / 2**30:.2f} GiB bf16; removing {args.drop} layers {removed}")
        print("| route | seconds | peak RSS (MiB) | peak RSS above imports (MiB) |")
        print("|---|---|---|---|")
        for mode, label in (("copy", "copy kept bytes (floor)"), ("stream", "hf-layerprune streaming"),
                            ("naive", "from_pretrained + del + save_pretrained (peer)")):
            r = results[mode]
            print(f"| {label} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_after_imports_mb']:.0f} |")
        print(f"stream / copy time: {results['stream']['seconds'] / results['copy']['seconds']:.2f}x (target <= 1.5x)")
        print(f"stream / naive time: {results['stream']['seconds'] / results['naive']['seconds']:.3f}x")
        print(f"stream / naive peak RSS: {results['stream']['peak_rss_mb'] / results['naive']['peak_rss_mb']:.3f} (target <= 0.1)")
        extra = {m: results[m]["peak_rss_mb"] - results[m]["rss_after_imports_mb"] for m in results}
        print(f"stream / naive RSS above the imports: {extra['stream'] / extra['naive']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
