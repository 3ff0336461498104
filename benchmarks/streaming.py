"""Layer-streamed scoring on a checkpoint larger than the memory it is allowed.

Builds a random Llama-shaped checkpoint (~1.1B parameters, 2.1 GiB bf16 by default), then in fresh
subprocesses computes the residual stream at every layer boundary (what angular / bi / cosine need):
  streamed   hf_layerprune.surgery.layer_stream.StreamedModel, one decoder layer in memory at a time,
             under an address-space cap (RLIMIT_DATA) smaller than the checkpoint,
  in-memory  from_pretrained + one forward with hooks (the peer approach), uncapped.
Prints time, peak RSS and the largest difference between the two sets of states.

    python benchmarks/streaming.py [--cap-gib 1.5] [--samples 8 --seq-len 256]
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

sys.path.insert(0, str(Path(__file__).parent))
from surgery import make_checkpoint  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import torch
mode, src, samples, seq_len, cap, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM
from hf_layerprune.surgery.layer_stream import StreamedModel
def hwm():
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
g = torch.Generator().manual_seed(0)
batches = [torch.randint(0, 32000, (1, seq_len), generator=g) for _ in range(samples)]
base = hwm()
if cap:  # allowed: the process's data segment after imports plus `cap` bytes
    vm_data = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData:"))
    resource.setrlimit(resource.RLIMIT_DATA, (vm_data + cap, vm_data + cap))
t = time.perf_counter()
if mode == "streamed":
    states = StreamedModel(src).boundary_states(batches)
    last = torch.cat(states[-1])
else:
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    layers = model.model.layers
    captured = []
    layers[-1].register_forward_hook(lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        for b in batches:
            model(b, use_cache=False)
    last = torch.cat(captured)
seconds = time.perf_counter() - t
torch.save(last.float(), out)
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm(), "rss_after_imports_mb": base}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--cap-gib", type=float, default=1.0, help="memory the streamed run may add after its imports (RLIMIT_DATA)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    try:
        src = work / "src"
        params = make_checkpoint(src, args)
        size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        results = {}
        for mode, cap in (("streamed", int(args.cap_gib * 2**30)), ("in-memory", 0)):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(args.samples), str(args.seq_len),
                                  str(cap), str(work / f"{mode}.pt")], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        import torch, transformers  # noqa: E401

        diff = (torch.load(work / "streamed.pt") - torch.load(work / "in-memory.pt")).abs().max().item()
        print(f"# layer-streamed scoring benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, "
              f"torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"checkpoint: {params / 1e9:.2f}B parameters, {size / 2**30:.2f} GiB; {args.samples} x {args.seq_len} tokens; "
              f"streamed run may allocate at most {args.cap_gib} GiB beyond its imports (RLIMIT_DATA)")
        print("| route | seconds | peak RSS (MiB) | above imports (MiB) |")
        print("|---|---|---|---|")
        for mode, r in results.items():
            print(f"| {mode} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_after_imports_mb']:.0f} |")
        print(f"max |streamed - in-memory| on the last layer's output: {diff:.2e}")
        print(f"streamed peak RSS / checkpoint size: {results['streamed']['peak_rss_mb'] * 2**20 / size:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
