"""On-disk surgery against its floor, `cp` of the kept bytes: time ratios, interleaved in one run.

Writes a random Llama-shaped bf16 checkpoint tensor by tensor (no torch, no model in memory; 2 GB shards), warms
the page cache with one read, then repeats, each in a fresh process and after an `os.sync()`:
  cp     `cp -r` of the checkpoint, its time scaled to the kept bytes (the floor, as in issue 36),
  cut    hf_layerprune.surgery.layers.prune_checkpoint with the provenance hash alongside (what the cut stage runs),
  cli    `hf-layerprune prune SRC --layers ... --heal none --no-eval -o OUT` end to end: start-up, imports,
         checks, the cut, layerprune.json and the card,
  naive  (--naive) AutoModelForCausalLM.from_pretrained + del + save_pretrained, the peer route.
in the order cp, cut, cli[, naive], cp, cut, cli ... Each tool run's ratio is to the cp run just before it; the
medians are printed with the peak RSS of each route (wait4's ru_maxrss of the child).

    python benchmarks/surgery.py                       # Llama-2-7B widths, 12 layers (5.4 GB), layers 5-8 removed
    python benchmarks/surgery.py --layers 32           # the full 7B shape (12.6 GiB; needs ~2x that in disk)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# PYTHONDONTWRITEBYTECODE (set on the project's VM) would make every run compile hf-layerprune's modules again
# (~0.1 s); an installed tool has its bytecode, so the children may write it (the first run does)
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPATH": str(REPO),
       "OMP_NUM_THREADS": "1"}

CUT = r"""
import json, sys, time
from pathlib import Path
from hf_layerprune.report.provenance import hashed_alongside
from hf_layerprune.surgery.layers import checkpoint_files, prune_checkpoint
src, dst, removed = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
start = time.perf_counter()
with hashed_alongside(checkpoint_files(src)):
    prune_checkpoint(src, dst, removed, max_shard_size="2GB")
print(json.dumps({"inner": time.perf_counter() - start}))
"""

NAIVE = r"""
import json, sys
from transformers import AutoModelForCausalLM
src, dst, removed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
for i in sorted(removed, reverse=True):
    del model.model.layers[i]
for i, layer in enumerate(model.model.layers):
    layer.self_attn.layer_idx = i
model.config.num_hidden_layers = len(model.model.layers)
model.save_pretrained(dst, max_shard_size="2GB")
"""


def tensor_shapes(args) -> list[tuple[str, list[int]]]:
    h, i, kv = args.hidden, args.intermediate, args.hidden // 32 * (args.kv_heads)
    out = [("model.embed_tokens.weight", [args.vocab, h])]
    for n in range(args.layers):
        p = f"model.layers.{n}."
        out += [(p + "input_layernorm.weight", [h]), (p + "post_attention_layernorm.weight", [h]),
                (p + "self_attn.q_proj.weight", [h, h]), (p + "self_attn.k_proj.weight", [kv, h]),
                (p + "self_attn.v_proj.weight", [kv, h]), (p + "self_attn.o_proj.weight", [h, h]),
                (p + "mlp.gate_proj.weight", [i, h]), (p + "mlp.up_proj.weight", [i, h]),
                (p + "mlp.down_proj.weight", [h, i])]
    return out + [("model.norm.weight", [h]), ("lm_head.weight", [args.vocab, h])]


def make_checkpoint(path: Path, args) -> int:
    """A safetensors checkpoint of random bf16 bytes, written tensor by tensor (numpy's generator, no torch)."""
    import numpy as np

    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shards, current, size = [], [], 0
    for name, shape in tensor_shapes(args):
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > 2 * 10**9:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape, nbytes))
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape, nbytes in shard:
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape, nbytes in shard:
                f.write(rng.bytes(nbytes))
        total += offset
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
              "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
              "num_attention_heads": args.hidden // 128, "num_key_value_heads": args.hidden // 128 * args.kv_heads // 32,
              "vocab_size": args.vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "dtype": "bfloat16", "hidden_act": "silu"}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return total // 2


def timed(cmd: list[str], cwd: Path | None = None, cache: Path | None = None) -> dict:
    """Wall seconds, peak RSS (GNU time's %M: a child forked from this process would inherit its peak) and, when
    the child prints {"inner": seconds} last, its own timing of the work after its imports."""
    env = {**ENV, "LAYERPRUNE_CACHE": str(cache)} if cache else ENV  # a fresh one: the provenance hash is paid
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        status = subprocess.call(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], env=env, cwd=cwd, stdout=out, stderr=err)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        errors = err.read().decode()
        if status:
            sys.exit(f"{cmd[:4]} failed:\n{errors[-3000:]}")
        last = (out.read().decode().strip().splitlines() or [""])[-1]
    inner = json.loads(last).get("inner") if last.startswith("{") else None  # the cut alone, after the imports
    rss_kb = int(errors.rpartition("MAXRSS ")[2].split()[0])
    return {"seconds": seconds, "peak_rss_mb": rss_kb / 1024, "inner": inner}


def kept_fraction(src: Path, removed: list[int]) -> tuple[int, int]:
    sys.path.insert(0, str(REPO))
    from hf_layerprune.surgery.layers import checkpoint_files, read_safetensors_header

    kept = total = 0
    for file in checkpoint_files(src):
        header, _ = read_safetensors_header(file)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            n = info["data_offsets"][1] - info["data_offsets"][0]
            total += n
            parts = key.split(".")
            if not (len(parts) > 2 and parts[1] == "layers" and int(parts[2]) in removed):
                kept += n
    return kept, total


def drop_page_cache() -> None:
    """Write back and drop the page cache (Linux, root): the next run reads its source from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        sys.exit(f"--cold needs root on Linux (/proc/sys/vm/drop_caches): {exc}")


def interleave(routes: dict, repeat: int, work: Path, kept_share: float, warm_hash: bool, destination,
               cold: bool = False) -> tuple:
    """Run every route `repeat` times in turn (cp, cut, cli, cp, cut, cli ...); each ratio is to the cp just before
    it (the page cache and the other load on the machine alike). `destination(name, r)` gives (the command's output
    path, the path to remove afterwards). Returns (runs, ratios, inner): per route the timed results, its ratios to
    the cp, and the cut stage's own time (after its imports) over the cp. `cold`: every run starts with an empty
    page cache (drop_page_cache), so each reads its source from the disk: the cache state left by the run before
    (which of 2 x 12 GiB stayed cached on a 24 GiB machine) no longer decides the ratio."""
    runs: dict[str, list[dict]] = {name: [] for name in routes}
    ratios: dict[str, list[float]] = {name: [] for name in routes if name != "cp"}
    inner: list[float] = []
    for r in range(repeat):
        for name, command in routes.items():
            dst, remove = destination(name, r)
            drop_page_cache() if cold else os.sync()
            cache = None if warm_hash else work / f"cache-{name}-{r}"
            result = timed(command(dst), cwd=work, cache=cache)  # cwd: `python -m` must not see another checkout
            if name == "cp":
                result["seconds"] *= kept_share
            else:
                ratios[name].append(result["seconds"] / runs["cp"][-1]["seconds"])
                if result["inner"] is not None:
                    inner.append(result["inner"] / runs["cp"][-1]["seconds"])
            runs[name].append(result)
            print(f"  {name:10s} run {r + 1}: {result['seconds']:.3f} s" + (
                " (scaled to the kept bytes)" if name == "cp" else f", {ratios[name][-1]:.2f}x the cp before it"),
                file=sys.stderr, flush=True)
            shutil.rmtree(remove)
    return runs, ratios, inner


def print_table(routes: dict, runs: dict, ratios: dict, inner: list[float], labels: dict, digits: int) -> None:
    print("| route | median seconds | median ratio to the cp before it | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name in routes:
        seconds = statistics.median(x["seconds"] for x in runs[name])
        ratio = f"{statistics.median(ratios[name]):.2f}x ({', '.join(f'{x:.2f}' for x in ratios[name])})" if name in ratios else "1"
        print(f"| {labels[name]} | {seconds:.{digits}f} | {ratio} | {max(x['peak_rss_mb'] for x in runs[name]):.0f} |")
    print(f"cut stage alone, after its imports (the process start-up and imports left out): median "
          f"{statistics.median(inner):.2f}x the cp ({', '.join(f'{x:.2f}' for x in inner)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=32, help="KV heads per 32 attention heads (32: MHA)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--remove", default="5,6,7,8", help="0-based layers to remove")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every run (Linux, root): "
                        "each run reads its source from the disk")
    parser.add_argument("--warm-hash", action="store_true", help="let runs reuse the provenance digests (and GGUF "
                        "header scans) of earlier ones (default: each run starts with an empty cache, so each hashes "
                        "the source)")
    parser.add_argument("--naive", action="store_true", help="also time the from_pretrained + save_pretrained peer")
    parser.add_argument("--workdir", default=None, help="where to write the checkpoints (default: a temp dir)")
    args = parser.parse_args()
    removed = [int(x) for x in args.remove.split(",")]

    work = Path(tempfile.mkdtemp(prefix="surgery-bench-", dir=args.workdir))
    try:
        src = work / "src"
        params = make_checkpoint(src, args)
        kept, total = kept_fraction(src, removed)
        for p in src.glob("*.safetensors"):  # warm the page cache so every route reads from memory alike
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
        py = sys.executable
        routes = {
            "cp": lambda dst: ["cp", "-r", str(src), str(dst)],
            "cut": lambda dst: [py, "-c", CUT, str(src), str(dst), json.dumps(removed)],
            "cli": lambda dst: [py, "-m", "hf_layerprune", "prune", str(src), "--layers", args.remove, "--heal", "none",
                                "--no-eval", "--max-shard-size", "2GB", "-o", str(dst)],
        }
        if args.naive:
            routes["naive"] = lambda dst: [py, "-c", NAIVE, str(src), str(dst), json.dumps(removed)]
        def destination(name: str, r: int) -> tuple[Path, Path]:
            dst = work / f"{name}-{r}"
            if name == "cut":
                dst.mkdir()
            return dst, dst

        runs, ratios, inner = interleave(routes, args.repeat, work, kept / total, args.warm_hash, destination,
                                         cold=args.cold)

        print(f"# on-disk surgery vs cp, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, "
              f"python {platform.python_version()}, {args.repeat} interleaved runs (cp, cut, cli{', naive' if args.naive else ''}); "
              f"{'digests reused across runs' if args.warm_hash else 'every run hashes the source (empty digest cache)'}"
              f"{'; page cache dropped before every run' if args.cold else ''}")
        print(f"checkpoint: {params / 1e9:.2f}B parameters ({args.layers} layers of hidden {args.hidden}, intermediate "
              f"{args.intermediate}), {total / 2**30:.2f} GiB bf16 in 2 GB shards; removing layers {removed} "
              f"({kept / 2**30:.2f} GiB kept)")
        labels = {"cp": "`cp -r`, scaled to the kept bytes (floor)", "cut": "cut stage (prune_checkpoint + provenance hash)",
                  "cli": "`hf-layerprune prune --layers` end to end", "naive": "from_pretrained + del + save_pretrained"}
        print_table(routes, runs, ratios, inner, labels, digits=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
