"""Golden model cards and help texts: what the card and the CLI help must keep saying, byte for byte.

`python tests/golden_cards.py` (with PYTHONPATH at the code to record) runs a few recipes on a tiny checkpoint
(tests/same_outputs.py's setup) and takes a few hand-written reports from tests/test_card.py, stores each report
(temporary paths replaced by /golden) under tests/data/golden/reports/, renders its card from that stored report
into tests/data/golden/cards/, and stores the help texts under tests/data/golden/help/. tests/test_golden_card.py
re-renders every stored report with the current code and compares. The recorded files came from the code before
the registries (issue 21), so a difference is a change in what the card or the help says.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden"
sys.path.insert(0, str(HERE))

# name -> prune arguments after the checkpoint (same_outputs.py's placeholders)
PIPELINE = {
    "default-eval": ["--drop", "2", "--tasks", "tiny_mc", "--limit", "4", "--perplexity", "{text}", "--include-path", "{tasks}"],
    "attention-eval": ["--drop", "2", "--granularity", "attention", "--metric", "bi", "--tasks", "tiny_mc", "--limit", "4",
                       "--perplexity", "{text}", "--include-path", "{tasks}"],
    "rounds": ["--drop", "2", "--rounds", "2", "--heal", "absorb", "--no-eval"],
    "linear+distill": ["--layers", "1,4", "--heal", "linear+distill", "--no-eval"],
    "replace": ["--layers", "2,3", "--heal", "replace", "--no-eval"],
    "streaming-last": ["--drop", "2", "--metric", "last", "--heal", "none", "--no-eval"],
    "ppl-topk-bias": ["--drop", "2", "--metric", "ppl", "--selection", "topk", "--heal", "bias", "--no-eval"],
}
COMMON = ["--calibration-samples", "4", "--seq-len", "16", "--heal-steps", "2"]
SWEEP = ["--drop", "1,2", "--heal", "linear", "--no-eval"]
HELP = {"root": ["--help"], "prune": ["prune", "--help"], "analyze": ["analyze", "--help"], "sweep": ["sweep", "--help"]}
HELP_ENV = {"COLUMNS": "160", "TERM": "dumb", "NO_COLOR": "1", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}


def hand_reports() -> dict[str, dict]:
    from test_card import OLD_REPORT, _paired_evaluation, bare_report, realistic_report

    out = {"realistic-lora": realistic_report(), "bare-streaming": bare_report()}
    licensed = realistic_report(base_card={"license": "llama2", "source": "test", "license_link": "LICENSE.txt"})
    out["licensed-paired"] = {**licensed, "evaluation": _paired_evaluation()}
    sub = bare_report()
    sub.update(granularity="attention", removed_layers=[], kept_layers=list(range(6)), num_layers_after=6,
               removed_sublayers={"attention": [2, 3, 4], "mlp": []},
               export={"format": "decilm", "trust_remote_code": True,
                       "kv_cache_bytes_per_token": {"before": 6 * 4096, "after": 3 * 4096}})
    out["decilm-attention"] = sub
    absorb = realistic_report(base_card={"license": "mit", "source": "t"})
    absorb["healing"].update(method="absorb", reverted=False,
                             runs=[{"removed": [5], "layers": [3, 4]}, {"removed": [12, 13], "layers": [10, 11]}])
    out["absorb"] = absorb
    auto = realistic_report()
    auto["scoring"].update(metric="auto", chosen_metric="cosine")
    auto["healing"].update(method="qlora")
    out["auto-qlora"] = auto
    out["old-gguf"] = json.loads(OLD_REPORT.read_text())
    return out


def normalize(value, root: str):
    if isinstance(value, dict):
        return {k: normalize(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v, root) for v in value]
    return value.replace(root, "/golden") if isinstance(value, str) else value


def render(report: dict, name: str, work: Path) -> str:
    """The card of `report` rendered in an empty folder `work/name` (offline, with plots; relative paths in the
    report resolved from `work`, where they name nothing, as when it was recorded)."""
    from contextlib import chdir

    from hf_layerprune.flow.finish import rerender
    from hf_layerprune.report import write_report

    out = work / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with chdir(work):
        write_report(out, json.loads(json.dumps(report)))
        return rerender(out, online=False).read_text(encoding="utf-8")


def help_texts() -> dict[str, str]:
    from typer.testing import CliRunner

    from hf_layerprune.cli import app

    runner = CliRunner()
    texts = {}
    for name, args in HELP.items():
        result = runner.invoke(app, args, env=HELP_ENV, terminal_width=160)
        assert result.exit_code == 0, result.output
        texts[name] = result.output
    return texts


def record() -> None:
    import tempfile

    from same_outputs import setup
    from typer.testing import CliRunner

    from hf_layerprune.cli import app

    reports = hand_reports()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = setup(root)
        runner = CliRunner()
        for name, args in PIPELINE.items():
            out = root / f"out-{name}"
            result = runner.invoke(app, ["prune", paths["ckpt"], *[a.format(**paths) for a in args], *COMMON, "-o", str(out)])
            assert result.exit_code == 0, result.output
            reports[name] = normalize(json.loads((out / "layerprune.json").read_text()), str(root))
        result = runner.invoke(app, ["sweep", paths["ckpt"], *SWEEP, *COMMON, "-o", str(root / "sweep")])
        assert result.exit_code == 0, result.output
        first = sorted((root / "sweep").iterdir())[0]
        reports["sweep-" + first.name] = normalize(json.loads((first / "layerprune.json").read_text()), str(root))
        for kind in ("reports", "cards", "help"):
            shutil.rmtree(GOLDEN / kind, ignore_errors=True)
            (GOLDEN / kind).mkdir(parents=True)
        for name, report in reports.items():
            (GOLDEN / "reports" / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
            (GOLDEN / "cards" / f"{name}.md").write_text(render(report, name, root / "render"), encoding="utf-8")
    for name, text in help_texts().items():
        (GOLDEN / "help" / f"{name}.txt").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    record()
