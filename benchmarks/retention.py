"""Retention on a range of docs, with per-doc scores, so that runs over disjoint ranges add up (issue 9).

`quality.py` runs every method through the pipeline and evaluates the first `--limit` docs. At 200 docs one
model's 3-task mean carries about ±4 points of retention of noise, more than the differences being measured. This
script evaluates models that already exist (a pipeline output directory, the base model, or the base with some
layers cut and no healing) on docs LO..HI-1 of each task through lm-eval's ``samples=``, stores the per-doc
scores, and prints the retention over every doc stored so far, with a paired standard error against the base (and
against `--versus`): the same docs for every model, so the difference between two models is far less noisy than
either mean.

    hf-layerprune prune MODEL --drop 6 -o out6 --no-eval                      # the default pipeline
    python benchmarks/retention.py --model MODEL --docs 0:500 base=base default=out6 cosine=cut:13-18
    python benchmarks/retention.py --model MODEL --docs 500:1000 base=base default=out6 cosine=cut:13-18
    python benchmarks/retention.py --render --versus default       # table over docs 0-999 from the store

Stored under ``--store`` (default ``benchmarks/retention_store``, committed, so that a later session on a fresh
machine can pair a new model with every model measured before) as ``NAME.json``: per task, doc id -> acc_norm.
Re-evaluating a doc overwrites it; a model is rendered over the docs that it and the base share.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_tasks import include_path  # noqa: E402

from hf_layerprune.recipe import parse_layers  # noqa: E402  (`--layers` syntax: 13-18, 3,12-17,25)

TASKS = ("local_hellaswag", "local_arc_easy", "local_piqa")
STORE = Path(__file__).resolve().parent / "retention_store"


def build(spec: str, base):
    """`base` | `cut:LAYERS` (the base with LAYERS removed, unhealed) | a saved model directory."""
    import copy

    import torch

    from hf_layerprune.surgery.layers import remove_layers

    if spec == "base":
        return base
    if spec.startswith("cut:"):
        model = copy.deepcopy(base)
        remove_layers(model, sorted(parse_layers(spec[4:])))
        return model
    if not Path(spec).is_dir():
        raise SystemExit(f"error: {spec!r} is neither base, cut:LAYERS nor a model directory")
    from hf_layerprune.surgery.checkpoint import load_checkpoint  # our DeciLM (sub-layer, --target) outputs with our classes

    return load_checkpoint(Path(spec), dtype=torch.float32)


def describe(spec: str) -> str:
    """What a spec is, for the table: a pipeline output says its metric, healer and removed layers."""
    if spec.startswith("cut:"):
        return "unhealed " + spec
    report = Path(spec) / "layerprune.json"
    if not report.exists():
        return spec
    r = json.loads(report.read_text())
    metric = r.get("scoring", {}).get("metric", "?")
    heal = (r.get("healing") or {}).get("method", "none")
    return f"pipeline output: {metric} + {heal}, removed {r.get('removed_layers')}"


def evaluate(model, tokenizer, lo: int, hi: int, batch_size: int) -> dict[str, dict[str, float]]:
    """acc_norm per doc id (as a string, for JSON) per task, on docs lo..hi-1."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from hf_layerprune.evaluation.lm_eval_runner import offline_datasets, task_manager

    manager = task_manager(str(include_path()), list(TASKS))
    with offline_datasets():
        res = simple_evaluate(model=HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size),
                              tasks=list(TASKS), task_manager=manager, samples={t: list(range(lo, hi)) for t in TASKS},
                              log_samples=True, bootstrap_iters=0)
    return {t: {str(s["doc_id"]): float(s["acc_norm"]) for s in res["samples"][t]} for t in TASKS}


def load(store: Path, name: str) -> dict:
    path = store / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"spec": None, "docs": {t: {} for t in TASKS}}


def save(store: Path, name: str, entry: dict) -> None:
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{name}.json.tmp"
    tmp.write_text(json.dumps(entry))
    tmp.replace(store / f"{name}.json")


def paired(a: dict, b: dict) -> tuple[float, float, float, float, int, list[float]]:
    """(mean of a, mean of b, mean(b - a), its standard error, docs per task, b's per-task means) of the 3-task
    mean over the docs a and b share.

    Each task weighs 1/3 (as in the retention mean); the SE adds the tasks' paired variances: the evaluation
    stage's own paired comparison (hf_layerprune/evaluation/paired.py) on the stored per-doc scores."""
    from hf_layerprune.evaluation.paired import compare_task

    recs = []
    for task in TASKS:
        ids = sorted(set(a["docs"][task]) & set(b["docs"][task]), key=int)
        if len(ids) < 2:
            raise SystemExit(f"error: fewer than 2 shared docs on {task}")
        rows = [{"doc_id": [int(i) for i in ids], "acc_norm": [m["docs"][task][i] for i in ids]} for m in (a, b)]
        recs.append(compare_task(rows[0], rows[1], "acc_norm"))
    k = len(recs)
    return (sum(r["base"] for r in recs) / k, sum(r["pruned"] for r in recs) / k, sum(r["delta"] for r in recs) / k,
            math.sqrt(sum(r["delta_se"] ** 2 for r in recs)) / k, min(r["docs"] for r in recs),
            [r["pruned"] for r in recs])


def render(store: Path, names: list[str], versus: list[str]) -> str:
    """The table; every row has its paired difference from base, and from each of `versus` (base there is dropped)."""
    versus = [v for v in versus if v != "base"]
    base = load(store, "base")
    if not any(base["docs"].values()):
        raise SystemExit(f"error: no base model scores in {store}; evaluate base=base first")
    head = ("| model | what | docs/task | " + " | ".join(t.removeprefix("local_") for t in TASKS) +
            " | mean | retention | vs base (paired) |" + "".join(f" vs {v} (paired) |" for v in versus))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    others = {v: load(store, v) for v in versus}
    for name in names:
        entry = load(store, name)
        base_mean, mean, diff, se, n, accs = paired(base, entry)
        row = (f"| {name} | {entry.get('what', entry['spec'])} | {n} | " + " | ".join(f"{a:.3f}" for a in accs) +
               f" | {mean:.4f} | {mean / base_mean * 100:.1f}% | {points(diff, se, base_mean)} |")
        for v, other in others.items():
            row += " – |" if name in (v, "base") else f" {points(*paired(other, entry)[2:4], base_mean)} |"
        lines.append(row)
    return "\n".join(lines)


def points(diff: float, se: float, base_mean: float) -> str:
    """A difference of means and its SE as points of retention (percent of the base mean)."""
    return f"{diff / base_mean * 100:+.1f} ± {se / base_mean * 100:.1f} pts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="NAME=SPEC; SPEC is base, cut:LAYERS (e.g. cut:13-18) or a model directory")
    parser.add_argument("--model", help="the base model (Hub id, directory or .gguf file)")
    parser.add_argument("--docs", default="0:200", help="LO:HI, docs LO..HI-1 of every task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--render", action="store_true", help="print the table from the store (every stored model, or those named)")
    parser.add_argument("--versus", default="", help="comma-separated stored models: also give each model's paired difference from them (base always)")
    args = parser.parse_args(argv)
    pairs = [m.split("=", 1) if "=" in m else (m, None) for m in args.models]
    if not args.render:
        if not args.model or any(spec is None for _, spec in pairs) or not pairs:
            parser.error("give --model and NAME=SPEC models to evaluate (or --render)")
        from hf_layerprune.surgery.loading import load_model

        lo, hi = (int(x) for x in args.docs.split(":"))
        base, tokenizer = load_model(args.model, dtype="float32")
        base.eval()
        for name, spec in pairs:
            start = time.perf_counter()
            entry = load(args.store, name)
            if entry["spec"] not in (None, spec):
                raise SystemExit(f"error: {name} is stored as {entry['spec']!r}, not {spec!r}; use another name")
            scores = evaluate(build(spec, base), tokenizer, lo, hi, args.batch_size)
            entry = load(args.store, name)  # again: another process may have stored another range meanwhile
            entry["spec"], entry["what"] = spec, describe(spec)
            for task in TASKS:
                entry["docs"][task].update(scores[task])
            save(args.store, name, entry)
            print(f"{name}: docs {lo}-{hi - 1} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    names = [n for n, _ in pairs] or sorted(p.stem for p in args.store.glob("*.json"))
    print(render(args.store, ["base", *[n for n in names if n != "base"]], [v for v in args.versus.split(",") if v]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
