"""Recipes run on tiny checkpoints, reduced to what must not change when the pipeline's memory use changes:
the weight files' sha256 and the report without timings. `python tests/same_outputs.py OUT.json` records them
(run it with PYTHONPATH pointing at the code to record). tests/data/same_outputs.json is the golden recording:
first made at cfb9032 (before the shared-weights base view, issue 22), matched by 33cab4b (issue 23 merged) after
setting aside the records issue 23 added, and re-recorded there with them, before the stages refactor (issue 21).
Re-recorded in session 11 with weights unchanged: `recipe.load_in_4bit` added, and `auto` no longer judges a single
candidate (its `held_out_loss` and `judged_with` are null where the three metrics agree). Re-recorded in issue 35:
reports gain the generation-fidelity settings (`generation_skipped` here: the tiny text has no 256-token article),
`recipe.heal_budget`, healer `options.budget`, and `auto`'s `held_out_kl` / `judged_with.objective`; the `rounds`
recipe's second round now keeps the candidate closest to the base (KL), so its layers and weights changed. The
lora, distill, replace and linear+distill weight hashes were kept from the earlier recording: on this CPU
(AVX512-BF16) db17af2 itself gives the new hashes for those four, the known CPU problem the lead is fixing.
tests/test_base_view.py compares the current code against it."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

COMMON = ["--calibration-samples", "4", "--seq-len", "16", "--heal-steps", "2"]
EVAL = ["--tasks", "tiny_mc", "--limit", "4", "--perplexity", "{text}"]
# name -> prune / sweep arguments after the checkpoint ({text}, {tasks} filled in)
RECIPES = {
    "default": ["--drop", "2", *EVAL, "--include-path", "{tasks}"],
    "linear": ["--drop", "2", "--metric", "bi", "--heal", "linear", "--no-eval"],
    "bias": ["--layers", "2,3", "--heal", "bias", "--no-eval"],
    "projection": ["--layers", "1,4", "--heal", "projection", "--no-eval"],
    "lora": ["--layers", "3", "--heal", "lora", *EVAL, "--include-path", "{tasks}"],
    "distill": ["--layers", "2,3", "--heal", "distill:hidden=1", "--no-eval"],
    "replace": ["--layers", "2,3", "--heal", "replace", "--no-eval"],
    "linear+distill": ["--layers", "1,4", "--heal", "linear+distill", "--no-eval"],
    "rounds": ["--drop", "2", "--rounds", "2", "--heal", "absorb", "--no-eval"],
    "attention": ["--drop", "2", "--granularity", "attention", "--metric", "bi", *EVAL,
                  "--include-path", "{tasks}"],
}
SWEEP = ["--drop", "1,2", "--heal", "linear", "--no-eval"]
DROPPED = {"seconds", "timings", "tokens_per_second", "versions", "command", "speed", "wall_seconds", "output_dir",
           "memory", "preflight", "provenance"}  # provenance hashes config.json, which names the transformers version


def normalize(value, root: str):
    if isinstance(value, dict):
        return {k: normalize(v, root) for k, v in value.items() if k not in DROPPED and "second" not in k}
    if isinstance(value, list):
        return [normalize(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    return value


def digest(out: Path, root: str) -> dict:
    weights = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.safetensors"))}
    report = json.loads((out / "layerprune.json").read_text())
    return {"weights": weights, "report": normalize(report, root)}


def setup(root: Path) -> dict[str, str]:
    from test_evaluation import DATA, TEXT, TINY_TASK
    from tiny_models import save_word_tokenizer, tiny_model

    ckpt = root / "tiny-llama"
    tiny_model("llama", num_layers=6).save_pretrained(ckpt)
    save_word_tokenizer(ckpt)
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    text = root / "text.raw"
    text.write_text(TEXT * 4, encoding="utf-8")
    return {"ckpt": str(ckpt), "tasks": str(tasks), "text": str(text)}


def run_recipe(name: str, root: Path, paths: dict[str, str]) -> dict:
    from typer.testing import CliRunner

    from hf_layerprune.cli import app

    runner = CliRunner()
    if name == "sweep":
        result = runner.invoke(app, ["sweep", paths["ckpt"], *SWEEP, *COMMON, "-o", str(root / "sweep")])
        assert result.exit_code == 0, result.output
        return {d.name: digest(d, str(root)) for d in sorted((root / "sweep").iterdir())}
    args = [a.format(**paths) for a in RECIPES[name]]
    out = root / f"out-{name}"
    result = runner.invoke(app, ["prune", paths["ckpt"], *args, *COMMON, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return digest(out, str(root))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = setup(root)
        recorded = {name: run_recipe(name, root, paths) for name in [*RECIPES, "sweep"]}
    Path(sys.argv[1]).write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
