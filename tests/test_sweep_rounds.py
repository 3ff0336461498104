"""`sweep` (several depths from one scoring pass, Pareto plot in every card) and `prune --rounds`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
from transformers import AutoModelForCausalLM

from hf_layerprune.cli import app
from hf_layerprune.flow.pipeline import round_sizes
from test_evaluation import DATA, TEXT, TINY_TASK
from tiny_models import tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    tiny_model("llama", num_layers=6).save_pretrained(path)
    return path


def eval_inputs(tmp_path):
    """(include dir with the tiny local lm-eval task, a perplexity text file) under `tmp_path`."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    text = tmp_path / "text.raw"
    text.write_text(TEXT * 4, encoding="utf-8")
    return tasks, text


def test_sweep_writes_one_model_per_depth_with_pareto_plot(pruned_model_dir, tmp_path):
    """One scoring pass (greedy `ppl`: shallower depths are prefixes), evaluated variants, a Pareto plot each."""
    tasks, text = eval_inputs(tmp_path)
    source = pruned_model_dir(0)  # tiny Llama, 3 layers, with a tokenizer
    root = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(source), "--drop", "1,2", "--metric", "ppl", "--heal", "none",
                                 "--eval", "--tasks", "tiny_mc", "--include-path", str(tasks), "--perplexity", str(text),
                                 "--calibration-samples", "4", "--seq-len", "16", "-o", str(root)])
    assert result.exit_code == 0, result.output
    outs = {p.name: p for p in root.iterdir()}
    assert set(outs) == {f"{source.name}-pruned-2L", f"{source.name}-pruned-1L"}  # <model name>-pruned-<L'>L
    reports = {name: json.loads((p / "layerprune.json").read_text()) for name, p in outs.items()}
    one, two = reports[f"{source.name}-pruned-2L"], reports[f"{source.name}-pruned-1L"]
    assert set(one["removed_layers"]) < set(two["removed_layers"])  # greedy: a prefix of the same path
    assert one["scoring"]["calibration"] == two["scoring"]["calibration"]  # one calibration set
    for name, p in outs.items():
        points = reports[name]["sweep"]["points"]
        assert len(points) == 2 and all(pt["mean_accuracy"] is not None for pt in points)
        assert (p / "sweep_pareto.png").stat().st_size > 0
        assert "sweep_pareto.png" in (p / "README.md").read_text()
        _, info = AutoModelForCausalLM.from_pretrained(p, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]


def test_sweep_refuses_bad_depths_before_work(checkpoint, tmp_path):
    for depths, message in (("1,6", "smaller than the number of layers"), ("2,2", "distinct depths"), ("x", "cannot read")):
        result = runner.invoke(app, ["sweep", str(checkpoint), "--drop", depths, "--no-eval", "-o", str(tmp_path / "s")])
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "s").exists()


def test_round_sizes():
    assert round_sizes(8, 3) == [3, 3, 2]
    assert round_sizes(2, 5) == [1, 1]


def test_prune_in_rounds_rescored_between_rounds(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(checkpoint), "--drop", "3", "--rounds", "2", "--metric", "bi",
                                 "--heal", "none", "--no-eval", "--calibration-samples", "4", "--seq-len", "16",
                                 "--protect", "first", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert [len(r["removed_layers"]) for r in report["rounds"]] == [2, 1]
    assert sorted(sum((r["removed_layers"] for r in report["rounds"]), [])) == report["removed_layers"]
    assert 0 not in report["removed_layers"] and report["num_layers_after"] == 3
    assert report["kept_layers"] == [i for i in range(6) if i not in report["removed_layers"]]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 3


def test_default_pipeline_end_to_end(pruned_model_dir, tmp_path):
    """`prune MODEL --drop N` with no other choice: default metric, default healer, evaluation, card."""
    from hf_layerprune.healing import DEFAULT_HEALER
    from hf_layerprune.scoring import DEFAULT_METRIC

    tasks, text = eval_inputs(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(pruned_model_dir(0)), "--drop", "1", "--tasks", "tiny_mc",
                                 "--include-path", str(tasks), "--perplexity", str(text),
                                 "--calibration-samples", "4", "--seq-len", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["scoring"]["metric"] == DEFAULT_METRIC and report["healing"]["method"] == DEFAULT_HEALER
    assert report["recipe"]["heal"] == DEFAULT_HEALER
    ev = report["evaluation"]
    assert ev["base"]["tiny_mc"]["acc"]["value"] is not None and ev["pruned"]["tiny_mc"]["acc"]["value"] is not None
    card = (out / "README.md").read_text()
    assert "tiny_mc" in card and DEFAULT_HEALER in card
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
