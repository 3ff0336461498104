"""Generation fidelity of healing and selection levers, paired against today's default on the same documents (issue 35).

`retention.py` measures multiple-choice retention; this script measures what the text a pruned model generates
keeps, with the measure every evaluation now reports (hf_layerprune/evaluation/fidelity.py): top-1 agreement with
the base model's next token and KL(base || pruned) over the first ``--seq-len`` tokens of WikiText-2 *test*
articles (never calibration or healing text here), and the LAMBADA-style last-word test built from the same
articles. The base model runs once per document and every model after it, so N models cost N + 1 forwards per
document.

    hf-layerprune prune MODEL --drop 6 -o out6 --no-eval                         # today's default
    hf-layerprune prune MODEL --layers 13-18 --heal linear -o lin6 --no-eval     # a lever, same layers
    python benchmarks/generation.py --model MODEL --docs 0:24 default6=out6 cut6=cut:13-18 lin6=lin6
    python benchmarks/generation.py --render --versus default6

On a GPU machine `benchmarks/generation_gpu.sh` runs the same levers at drop 6 and drop 9 over every article.

Models are specs as in `retention.py`: `cut:LAYERS` (the base with LAYERS removed, unhealed) or a saved model
directory (a pipeline output says its metric, healer, removed layers and stage times), or
`heal:HEAL@LAYERS[@DATA[@SEQ_LEN]]`: the base cut at LAYERS and healed in this process as the pipeline's heal stage
does (`heal_for_recipe`, healing text from DATA, default `self`, in SEQ_LEN-token windows, default the recipe's 256),
timed. `self` text is generated once per process and
shared by every `heal:` model (calibration.py's memo), which is why they are made here and not by separate runs. Per-document values are
stored under ``--store`` (default ``benchmarks/generation_store``, committed) as ``NAME.json``, keyed by article
index, so that runs over disjoint ``--docs`` ranges add up and a later session can pair a new model with these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_tasks import data_dir  # noqa: E402
from retention import build, describe  # noqa: E402

from hf_layerprune.evaluation.fidelity import DEFAULT_SEQ_LEN, logprobs, prepare, score_document, summarize  # noqa: E402
from hf_layerprune.evaluation.paired import standard_error  # noqa: E402

STORE = Path(__file__).resolve().parent / "generation_store"


def healed(spec: str, base, tokenizer):
    """`heal:HEAL@LAYERS[@DATA[@SEQ_LEN]]` -> (a standalone healed copy, {"heal": s, "healer": s}); `base` is left as it was."""
    import copy

    from hf_layerprune.surgery.base_view import trial
    from hf_layerprune.healing import heal_for_recipe
    from hf_layerprune.recipe import Recipe, parse_layers
    from hf_layerprune.surgery.layers import kept_layers, remove_layers

    heal, layers, *rest = spec[len("heal:"):].split("@")
    data, seq_len = (rest + [None, None])[:2]
    removed = sorted(parse_layers(layers))
    num_layers = base.config.num_hidden_layers
    recipe = Recipe(model="base", layers=removed, heal=heal, heal_data=data or None,
                    **({"seq_len": int(seq_len)} if seq_len else {}))
    report = {"removed_layers": removed, "kept_layers": kept_layers(removed, num_layers), "num_layers_before": num_layers}
    start = time.perf_counter()
    with trial(base) as shared:
        remove_layers(base, removed)
        record, _ = heal_for_recipe(base, tokenizer, recipe, report, base_model=shared, log=print)  # (healing, cut)
        model = copy.deepcopy(base)
    # heal: wall seconds, sampling the `self` text included (the first heal: of a process pays it); healer: the
    # healing record's own seconds (capture, fit or training, held-out checks)
    return model.eval(), {"heal": round(time.perf_counter() - start), "healer": round(record.seconds or 0)}


def stage_seconds(spec: str) -> dict[str, float]:
    """A pipeline output's stage times (layerprune.json `timings`), else {}."""
    report = Path(spec) / "layerprune.json"
    if spec.startswith("cut:") or not report.exists():
        return {}
    return {k: round(v) for k, v in (json.loads(report.read_text()).get("timings") or {}).items()}


def load_self_text(path: Path | None) -> dict:
    """calibration.py's in-process memo of `self` text, filled from `path` (a pickle written by an earlier run)."""
    import pickle

    from hf_layerprune.runtime import calibration

    if path and path.exists():
        calibration._SELF_MEMO.update(pickle.loads(path.read_bytes()))
    return calibration._SELF_MEMO


def save_self_text(path: Path | None, memo: dict) -> None:
    import pickle

    if path:
        path.write_bytes(pickle.dumps(dict(memo)))


def measure(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_layerprune.evaluation.perplexity import load_text_rows

    torch.set_num_threads(args.threads)
    lo, hi = (int(x) for x in args.docs.split(":"))
    rows, _ = load_text_rows(str(data_dir() / "wikitext2_raw" / "wiki.test.raw"))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval().to(args.device)
    docs = prepare(tokenizer, rows, docs=hi, seq_len=args.seq_len)[lo:hi]
    specs = dict(s.split("=", 1) for s in args.models)
    args.store.mkdir(parents=True, exist_ok=True)
    base_lps: dict[int, object] = {}  # per document, computed once (~200 MB each for SmolLM2's vocabulary)
    memo = load_self_text(args.self_text)
    for name, spec in specs.items():  # one model at a time: made, scored and stored before the next is made
        if spec.startswith("heal:"):
            model, seconds = healed(spec, base, tokenizer)
            save_self_text(args.self_text, memo)
        else:
            model, seconds = build(spec, base).eval().to(args.device), stage_seconds(spec)
        path = args.store / f"{name}.json"
        store = json.loads(path.read_text()) if path.exists() else {"docs": {}}
        what = f"healed here: {spec[5:]}" if spec.startswith("heal:") else describe(spec)
        store.update(what=what, seq_len=args.seq_len, stage_seconds=seconds)
        start = time.perf_counter()
        for n, item in enumerate(docs, 1):
            if item["doc"] not in base_lps:
                base_lps[item["doc"]] = logprobs(base, item["ids"])
            rec = score_document(base_lps[item["doc"]], logprobs(model, item["ids"]), item["ids"], item["targets"])
            store["docs"][str(item["doc"])] = rec
            path.write_text(json.dumps(store) + "\n")
            print(f"{name}: doc {item['doc']} ({n}/{len(docs)}) {time.perf_counter() - start:.0f}s", flush=True)
        del model


def _paired(xs: list[float]) -> str:
    return f"{sum(xs) / len(xs):+.3f} ± {standard_error(xs):.3f}" if len(xs) > 1 else "–"


def render(args) -> None:
    stored = {p.stem: json.loads(p.read_text()) for p in sorted(args.store.glob("*.json"))}
    names = args.names or list(stored)
    versus = [v for v in (args.versus or "").split(",") if v]
    head = ["model", "what", "docs", "targets", "top-1 agreement", "KL(base‖pruned)", "NLL base → pruned",
            "last word base → pruned", "last-word retention (paired)", "word ppl"]
    head += [f"vs {v}: ΔKL, Δtop-1 (pts), Δlast word (pts)" for v in versus] + ["stage times (s)"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name in names:
        docs = stored[name]["docs"]
        s = summarize(list(docs.values()))
        lw = s["last_word"] or {}
        row = [name, stored[name].get("what", ""), str(s["docs"]), str(lw.get("targets", 0)),
               f"{100 * s['top1']:.1f}% ± {100 * s['top1_se']:.1f}", f"{s['kl']:.3f} ± {s['kl_se']:.3f}",
               f"{s['nll_base']:.3f} → {s['nll_pruned']:.3f}",
               f"{100 * lw['base']:.1f} → {100 * lw['pruned']:.1f}" if lw else "–",
               f"{lw['retention_pct']:.1f}% ± {lw['retention_se_pts']:.1f}" if lw else "–",
               f"{lw['word_perplexity_base']:.1f} → {lw['word_perplexity_pruned']:.1f}" if lw else "–"]
        for v in versus:
            other = stored[v]["docs"]
            shared = sorted(set(docs) & set(other), key=int)
            if v == name or len(shared) < 2:
                row.append("–")
                continue
            dkl = [docs[d]["kl"] - other[d]["kl"] for d in shared]
            dtop = [100 * (docs[d]["top1"] - other[d]["top1"]) for d in shared]
            words = [(t, u) for d in shared for t, u in zip(docs[d]["targets"], other[d]["targets"])]
            dlw = [100.0 * (t["pruned"] - u["pruned"]) for t, u in words]
            row.append(f"{_paired(dkl)}; {_paired(dtop)}; {_paired(dlw)}")
        row.append(", ".join(f"{k} {v}" for k, v in (stored[name].get("stage_seconds") or {}).items()) or "–")
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="NAME=SPEC to measure, or NAMEs to render (default: all stored)")
    parser.add_argument("--model", help="the base model directory (transformers)")
    parser.add_argument("--docs", default="0:24", help="articles LO:HI of the WikiText-2 test split (default 0:24)")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (models, healing and scoring)")
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--self-text", type=Path, help="a file that keeps the sampled `self` healing text between runs "
                        "(sampling 68 x 256 tokens took 25 min on the loaded 2-core VM); read if present, written after each heal")
    parser.add_argument("--render", action="store_true", help="print the table over every stored document")
    parser.add_argument("--versus", help="comma-separated stored names to pair every model with")
    args = parser.parse_args()
    if args.render:
        args.names = args.models
        render(args)
    else:
        if not args.model or not args.models:
            raise SystemExit("error: give --model and NAME=SPEC models (or --render)")
        measure(args)


if __name__ == "__main__":
    main()
