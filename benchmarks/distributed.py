"""Scoring wall time with 1 and with 2 processes (`torchrun --nproc_per_node 2`), on the CPU, in one run.

The same `hf-layerprune prune --drop N --metric bi` command (a static metric: one capture pass over the calibration
set) is run three times on a random Llama built from a config, with a text calibration file (so no stage samples
text from the model): one process with one thread, one process with two threads (all the cores of a 2-core machine),
and two processes with one thread each (the calibration micro-batches split between them, the statistics summed).
The figure is the `score` stage of rank 0's `layerprune.json` (`timings.score`); the removed layers must agree.

    python benchmarks/distributed.py [--hidden 512 --layers 16 --intermediate 1408] [--samples 64 --seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(directory: Path, args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import VOCAB, save_word_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=args.intermediate,
                         num_attention_heads=8, num_key_value_heads=8, vocab_size=args.vocab, max_position_embeddings=2048)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory / "model")
    save_word_tokenizer(directory / "model")
    rng = random.Random(0)
    words = args.samples * args.seq_len * 2
    text = " ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(words))
    (directory / "calibration.txt").write_text("\n".join(text[i : i + 2000] for i in range(0, len(text), 2000)))


def prune_command(directory: Path, out: str, args) -> list[str]:
    return ["-m", "hf_layerprune", "prune", str(directory / "model"), "--drop", str(args.drop), "--metric", "bi",
            "--calibration", str(directory / "calibration.txt"), "--calibration-samples", str(args.samples),
            "--seq-len", str(args.seq_len), "--heal", "none", "--no-eval", "--quiet", "-o", str(directory / out)]


def timed_run(directory: Path, name: str, processes: int, threads: int, args) -> dict:
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    command = [*launcher, *prune_command(directory, name, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    report = json.loads((directory / name / "layerprune.json").read_text())
    shown = " ".join(["OMP_NUM_THREADS=" + str(threads), *(["torchrun", "--nproc_per_node", str(processes)]
                                                            if processes > 1 else ["python"]), *command[len(launcher):]])
    return {"name": name, "processes": processes, "threads": threads, "score_s": report["timings"]["score"],
            "removed": report["removed_layers"], "command": shown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--drop", type=int, default=4)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} "
          f"before the runs); Llama {args.layers} layers x "
          f"{args.hidden} hidden, calibration {args.samples} x {args.seq_len} tokens "
          f"({max(1, 4096 // args.seq_len)} sequences per micro-batch)")
    with tempfile.TemporaryDirectory(prefix="hf-layerprune-bench-dist-") as tmp:
        directory = Path(tmp)
        build(directory, args)
        runs = [timed_run(directory, "one-1t", 1, 1, args), timed_run(directory, "one-2t", 1, 2, args),
                timed_run(directory, "two-1t", 2, 1, args)]
    for run in runs:
        print(f"{run['processes']} process(es) x {run['threads']} thread(s): score {run['score_s']:.2f} s, "
              f"removed {run['removed']}\n    {run['command']}")
    one, all_cores, two = (r["score_s"] for r in runs)
    same = len({tuple(r["removed"]) for r in runs}) == 1
    print(f"load average after the runs: {os.getloadavg()[0]:.1f} (other work on the machine slows every row)")
    print(f"ratio 2 processes / 1 process (1 thread each): {two / one:.2f}; "
          f"2 processes x 1 thread / 1 process x 2 threads: {two / all_cores:.2f}; same layers removed: {same}")


if __name__ == "__main__":
    main()
