"""Heal a pipeline output further with a trained healer from the unpruned model, for `retention.py` (issue 9).

The default pipeline heals with `absorb` on 64 self-generated sequences. This script takes its output directory
and runs one more healer on it (default: `distill`, LoRA on every linear module, KL to the unpruned model's
logits) at a budget the CLI's defaults do not spend, on healing text mixed from sequences sampled from the base
model and windows of a local text file, then saves the result where `retention.py` can evaluate it:

    hf-layerprune prune MODEL --drop 6 -o out6 --no-eval
    python benchmarks/reheal.py out6 --model MODEL -o out6_kd --steps 150 \\
        --text /path/to/wikitext2_tokens/wiki.valid.tokens --text-samples 1000
    python benchmarks/retention.py --model MODEL --docs 0:1000 base=base kd6=out6_kd

Keep the text disjoint from the evaluation (WikiText-2 *valid* heals, *test* measures perplexity). Self-generated
sequences are cached (``--self-cache``): sampling them costs ~9 minutes on one CPU thread for 160 x 256 tokens.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

def healing_text(base, tokenizer, args) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows): self-generated rows (the last `eval_samples` held out) plus file windows."""
    from hf_layerprune.runtime.calibration import calibration_batches

    cache = Path(args.self_cache)
    if cache.exists():
        self_ids = torch.load(cache)
    else:
        self_ids = calibration_batches("self", tokenizer, model=base, samples=args.self_samples, seq_len=args.seq_len, seed=1)
        torch.save(self_ids, cache)
    held_out, rows = self_ids[-args.eval_samples :], [self_ids[: -args.eval_samples]]
    if args.text:
        rows.append(calibration_batches(args.text, tokenizer, samples=args.text_samples, seq_len=args.seq_len, seed=3))
    train = torch.cat(rows)
    return train[torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))], held_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a pipeline output directory (has layerprune.json)")
    parser.add_argument("--model", required=True, help="the unpruned model it came from (Hub id, directory or .gguf)")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--heal", default="distill")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, help="default: 2e-4 for a LoRA adapter, distill's own default for --adapter full")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--adapter", default="lora", help="distill's adapter: lora (rank --rank) or full (every weight but embeddings and head)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--text", help="a local text file for most of the healing windows")
    parser.add_argument("--text-samples", type=int, default=1000)
    parser.add_argument("--self-samples", type=int, default=160)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0,
                        help="row order and training seed; a further stage on an already re-healed output draws other rows with another")
    parser.add_argument("--self-cache", default=str(Path.home() / ".cache" / "hf-layerprune" / "self_ids.pt"))
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from hf_layerprune.healing import chain_record, heal
    from hf_layerprune.healing.lora import ALL_LINEAR
    from hf_layerprune.surgery.loading import load_model
    from hf_layerprune.runtime.outputs import staging_dir
    from hf_layerprune.report import read_report, write_report

    source = Path(args.source)
    report = read_report(source)
    base, tokenizer = load_model(args.model, dtype="float32")
    base.eval()
    Path(args.self_cache).parent.mkdir(parents=True, exist_ok=True)
    train, held_out = healing_text(base, tokenizer, args)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    start = time.perf_counter()
    if args.learning_rate is None and args.adapter == "lora":
        args.learning_rate = 2e-4
    extra = {"adapter": args.adapter} if args.adapter != "lora" else {"targets": [ALL_LINEAR]}
    record = heal(model, args.heal, train, eval_ids=held_out, base_model=base, report=report, log=print,
                  steps=args.steps, seed=args.seed, batch_size=args.batch_size, learning_rate=args.learning_rate, rank=args.rank, **extra)
    seconds = time.perf_counter() - start
    keys = ("loss_before", "loss_after", "kd_before", "kd_after", "hidden_before", "hidden_after", "tokens_per_second")
    print(f"{args.heal}: {seconds:.0f} s, {len(train)} rows,", {k: record.get(k) for k in keys})
    earlier = report.get("healing")  # recorded as the CLI records a chain (`--heal absorb+distill`)
    stages = (earlier.get("stages") or [earlier]) if earlier else []
    report["healing"] = {**chain_record([*stages, record]), "data": (earlier or {}).get("data")}
    with staging_dir(args.output, overwrite=True) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        write_report(stage, report)
    print("saved", args.output)


if __name__ == "__main__":
    main()
