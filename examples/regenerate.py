"""Re-make the example card in this folder from a pruned output (issue 23): evaluation, card, Hub-like screenshot.

    hf-layerprune prune SmolLM2-135M-Instruct.Q4_1.gguf --drop 6 -o default6 --no-eval     # today's defaults
    python examples/regenerate.py --model SmolLM2-135M-Instruct.Q4_1.gguf --pruned default6 \\
        --tasks local_hellaswag,local_arc_easy,local_piqa --limit 1000 --extra local_boolq:300 \\
        --perplexity wiki.test.raw --perplexity-tokens 16384 --out examples/SmolLM2-135M-Instruct-pruned-24L
    python examples/regenerate.py --screenshot examples/SmolLM2-135M-Instruct-pruned-24L

The evaluation is the evaluation stage's own (``run_lm_eval`` with per-document scores, ``perplexity``,
``measure_speed_pair``, ``evaluation_section``), with one saving: per-document scores of the base model already
stored by ``benchmarks/retention.py`` (same local tasks, lm-eval version and docs; acc_norm) are reused instead of
evaluating the base model again, and the report says so (``evaluation.base_scores_from``). The gold labels and
numbers of choices those stored scores lack are the pruned model's run's: the same documents. ``--extra TASK:N``
evaluates a further task on its first N documents for both models (BoolQ shows the chance/majority rule at work).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "benchmarks" / "retention_store"


def stored_base(store: Path, tasks: list[str], limit: int, pruned_samples: dict, pruned_results: dict):
    """(results, samples) of the base model from the retention store, or None when it lacks a doc or task."""
    path = store / "base.json"
    if not path.is_file():
        return None
    docs = json.loads(path.read_text())["docs"]
    results, samples = {}, {}
    for task in tasks:
        have = docs.get(task) or {}
        ids = list(range(limit))
        theirs = pruned_samples.get(task) or {}
        if any(str(i) not in have for i in ids) or theirs.get("doc_id") != ids:
            return None
        values = [float(have[str(i)]) for i in ids]
        samples[task] = {"doc_id": ids, "acc_norm": values, "target": theirs["target"], "choices": theirs["choices"]}
        from hf_layerprune.evaluation.paired import standard_error

        ref = pruned_results[task]["acc_norm"]
        results[task] = {"acc_norm": {**ref, "value": sum(values) / len(values), "stderr": standard_error(values)}}
    return results, samples


def evaluate(args) -> None:
    import torch

    from hf_layerprune.evaluation import EvalSettings, evaluation_section, perplexity, speed_of_pair
    from hf_layerprune.evaluation.fidelity import fidelity_of_pair, held_out_text
    from hf_layerprune.evaluation.lm_eval_runner import run_lm_eval
    from hf_layerprune.report import read_report, write_report
    from hf_layerprune.report.provenance import portable_command
    from hf_layerprune.surgery.loading import load_model, resolve_source

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tasks = args.tasks.split(",")
    extra = dict((t.split(":")[0], int(t.split(":")[1])) for t in args.extra.split(",") if t) if args.extra else {}
    base, tok = load_model(resolve_source(args.model, None), dtype="float32")
    pruned_dir = Path(args.pruned)
    pruned, ptok = load_model(resolve_source(str(pruned_dir), None), dtype="auto")
    out = {"base": {"lm_eval": {}, "lm_eval_samples": {}}, "pruned": {"lm_eval": {}, "lm_eval_samples": {}}}

    def run(model, tokenizer, names, limit, who):
        res = run_lm_eval(model, tokenizer, names, limit=limit, batch_size=8, log=print)
        out[who]["lm_eval"].update(res["results"])
        out[who]["lm_eval_samples"].update(res["samples"])
        out[who]["lm_eval_settings"] = res["settings"]

    run(pruned, ptok, tasks, args.limit, "pruned")
    reused = stored_base(Path(args.store), tasks, args.limit, out["pruned"]["lm_eval_samples"], out["pruned"]["lm_eval"])
    if reused:
        print(f"base: per-document scores of {', '.join(tasks)} from {args.store}/base.json")
        out["base"]["lm_eval"].update(reused[0])
        out["base"]["lm_eval_samples"].update(reused[1])
        for task in tasks:  # only the metric both have
            out["pruned"]["lm_eval"][task] = {"acc_norm": out["pruned"]["lm_eval"][task]["acc_norm"]}
    else:
        run(base, tok, tasks, args.limit, "base")
    for task, limit in extra.items():
        run(pruned, ptok, [task], limit, "pruned")
        run(base, tok, [task], limit, "base")
    settings = EvalSettings(tasks=tasks + list(extra), limit=args.limit, perplexity=args.perplexity,
                            ppl_max_tokens=args.perplexity_tokens, speed_threads=args.threads,
                            generation=held_out_text(args.generation or (args.perplexity if args.perplexity != "wikitext" else None)))
    for who, model, tokenizer in (("base", base, tok), ("pruned", pruned, ptok)):
        out[who]["perplexity"] = perplexity(model, tokenizer, args.perplexity, seq_len=512, max_tokens=args.perplexity_tokens)
        print(f"{who}: perplexity {out[who]['perplexity']['perplexity']:.3f}")
    speed = speed_of_pair(base, pruned, ptok, settings, pruned_dir=pruned_dir, log=print)
    generation = fidelity_of_pair(base, pruned, ptok, settings, log=print)  # the evaluation stage's own measure
    section = evaluation_section(settings, out["base"], out["pruned"], time.perf_counter() - start, speed_pair=speed,
                                 generation=generation)
    if extra:
        section["settings"]["limit_per_task"] = {**{t: args.limit for t in tasks}, **extra}
    if reused:
        section["base_scores_from"] = ("benchmarks/retention_store/base.json (per-document acc_norm of the same base "
                                       "model on the same documents, lm-eval and local tasks)")
    section["command"] = "python examples/regenerate.py " + portable_command(shlex.join(sys.argv[1:]))
    report = read_report(pruned_dir)
    report["evaluation"] = section
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("layerprune*"):
        old.unlink()
    write_report(dest, report)
    render(dest)


def render(dest: Path) -> None:
    from hf_layerprune.flow.finish import rerender

    print(f"wrote {rerender(dest, online=False)}")


HTML = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font: 15px/1.6 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; max-width: 980px;
       margin: 24px auto; padding: 0 24px; }}
table {{ border-collapse: collapse; margin: 12px 0; display: block; overflow: auto; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 10px; font-size: 13px; }}
tr:nth-child(2n) {{ background: #f6f8fa; }}
code {{ background: #eff1f3; padding: 1px 4px; border-radius: 4px; font-size: 85%; }}
pre {{ background: #f6f8fa; padding: 12px; overflow: auto; font-size: 12px; line-height: 1.45; }}
pre code {{ background: none; padding: 0; }}
img {{ max-width: 100%; }} blockquote {{ color: #59636e; border-left: 4px solid #d0d7de; margin: 0; padding: 0 14px; }}
.meta {{ border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; background: #fbfbfc; margin-bottom: 16px; }}
.meta h4 {{ margin: 4px 0; font-size: 12px; color: #59636e; text-transform: uppercase; }}
</style></head><body><div class="meta"><h4>Model card metadata</h4><pre>{meta}</pre></div>{body}</body></html>"""


def screenshot(dest: Path) -> None:
    """README.md -> GitHub-flavoured HTML (markdown-it-py: tables, strikethrough, raw HTML as the Hub allows) ->
    a full-page PNG from headless Chromium, beside the card."""
    from html import escape

    from markdown_it import MarkdownIt

    text = (dest / "README.md").read_text(encoding="utf-8")
    end = text.index("\n---\n", 4)
    meta, body = text[4:end], text[end + 5:]
    html = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(body)
    page = dest / ".card.html"
    page.write_text(HTML.format(meta=escape(meta), body=html), encoding="utf-8")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: chromium not found (apt-get install -y chromium)")
    try:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--hide-scrollbars", "--window-size=1100,9000", f"--screenshot={dest / 'card_screenshot.png'}",
                        page.resolve().as_uri()], check=True, timeout=120, capture_output=True)
    finally:
        page.unlink()
    from PIL import Image, ImageChops

    shot = dest / "card_screenshot.png"
    image = Image.open(shot).convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    if box:  # the window is taller than the page: cut the blank bottom
        image.crop((0, 0, image.width, min(image.height, box[3] + 24))).save(shot, optimize=True)
    print(f"wrote {shot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the base model (GGUF file, directory or Hub id)")
    parser.add_argument("--pruned", help="the pruned output directory (hf-layerprune prune ... --no-eval)")
    parser.add_argument("--tasks", default="local_hellaswag,local_arc_easy,local_piqa")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--extra", default="", help="TASK:N,... further tasks on their first N docs")
    parser.add_argument("--perplexity", default="wikitext")
    parser.add_argument("--perplexity-tokens", type=int, default=None)
    parser.add_argument("--generation", default=None, help="held-out text of generation fidelity (default: as the "
                        "pipeline, WikiText-2 test: --perplexity's file when given there)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--store", default=str(STORE))
    parser.add_argument("--out", default=str(Path(__file__).parent / "SmolLM2-135M-Instruct-pruned-24L"))
    parser.add_argument("--render", metavar="DIR", help="only re-render the card in DIR from its layerprune.json")
    parser.add_argument("--screenshot", metavar="DIR", help="only render DIR/README.md as the Hub would and screenshot it")
    args = parser.parse_args()
    if args.render:
        render(Path(args.render))
    elif args.screenshot:
        screenshot(Path(args.screenshot))
    else:
        if not args.model or not args.pruned:
            parser.error("give --model and --pruned (or --render / --screenshot DIR)")
        evaluate(args)
        screenshot(Path(args.out))


if __name__ == "__main__":
    main()
