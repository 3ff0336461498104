"""`hf-layerprune analyze` (tables, JSON, PNG) and metric-driven `prune --drop N --metric X`, end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner
from transformers import AutoModelForCausalLM

from hf_layerprune.cli import app
from test_scoring import planted

torch.set_num_threads(1)
runner = CliRunner()
CAL = ["--calibration-samples", "8", "--seq-len", "32"]
PLAIN = ["--heal", "none", "--no-eval"]  # prune defaults heal and evaluate; these tests are about selection


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama on disk (no tokenizer) whose layer 2 is an exact identity."""
    path = tmp_path_factory.mktemp("ckpt") / "llama"
    planted("llama", identity=[2]).save_pretrained(path)
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_analyze_all_writes_json_and_png(checkpoint, tmp_path):
    out_json, out_png = tmp_path / "scores.json", tmp_path / "plots" / "scores.png"
    result = invoke("analyze", checkpoint, "--metric", "all", "--drop", "1", "--json", out_json, "--plot", out_png, *CAL)
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert data["model"] == str(checkpoint) and data["model_type"] == "llama"
    assert data["num_layers"] == 6 and data["granularity"] == "block" and data["drop"] == 1
    assert data["calibration"]["source"] == "self" and data["calibration"]["tokens"] == 256
    assert list(data["metrics"]) == ["angular", "bi", "cosine", "shapley", "ppl", "gradient", "taylor", "last", "reverse", "random"]
    for name, entry in data["metrics"].items():
        assert {"metric", "selection", "granularity", "scores", "selected", "ranking", "higher_is_more_important",
                "seconds", "summary"} <= set(entry), name
        assert sorted(entry["ranking"]) == list(range(6))
        if name not in ("last", "reverse", "random"):
            assert entry["selected"] == [2], name
    assert set(data["metrics"]["angular"]["scores"]["blocks"]) == {"1", "2", "3", "4", "5"}
    assert len(data["metrics"]["bi"]["scores"]["per_layer"]) == 6
    assert data["metrics"]["ppl"]["greedy_order"] == [2]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Suggested layers to remove" in result.output and "best block" in result.output


def test_analyze_sublayers(checkpoint, tmp_path):
    out_json = tmp_path / "mlp.json"
    result = invoke("analyze", checkpoint, "--metric", "bi,shapley", "--granularity", "mlp", "--json", out_json,
                    "--plot", tmp_path / "mlp.png", *CAL)
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert data["drop"] is None and set(data["metrics"]) == {"bi", "shapley"}
    for entry in data["metrics"].values():
        assert entry["scores"]["unit"] == "mlp" and entry["selected"] is None
        assert entry["ranking"][0] == 2  # its MLP is zero too: the whole layer is an identity


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "nope"], "Error: unknown --metric 'nope'"),
        (["--metric", "angular", "--granularity", "attention"], "Error: --metric angular does not support --granularity attention"),
        (["--granularity", "heads"], "Error: unknown --granularity 'heads'"),
        (["--metric", "bi", "--selection", "best", "--drop", "1"], "Error: unknown --selection 'best'"),
    ],
)
def test_analyze_bad_input_is_one_line(checkpoint, args, message):
    result = invoke("analyze", checkpoint, *args, *CAL)
    assert result.exit_code == 2
    assert message in result.output and len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_prune_drop_with_metric_end_to_end(checkpoint, tmp_path):
    out = tmp_path / "pruned"
    result = invoke("prune", checkpoint, "--drop", "1", "--metric", "shapley", "-o", out, *CAL, *PLAIN)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["removed_layers"] == [2] and report["kept_layers"] == [0, 1, 3, 4, 5]
    scoring = report["scoring"]
    assert scoring["metric"] == "shapley" and scoring["selection"] == "topk" and scoring["selected"] == [2]
    assert scoring["calibration"]["sampling"]["prompt"] == "bos-token-ids (no tokenizer)"
    assert len(scoring["scores"]["per_layer"]) == 6 and scoring["higher_is_more_important"] is True
    assert report["recipe"]["metric"] == "shapley" and report["recipe"]["calibration_samples"] == 8
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert model.config.num_hidden_layers == 5 and not info["missing_keys"] and not info["unexpected_keys"]


def test_prune_and_analyze_agree_and_protect_is_honoured(checkpoint, tmp_path):
    common = ["--drop", "2", "--metric", "angular", "--protect", "2", *CAL]
    analysis = tmp_path / "a.json"
    assert invoke("analyze", checkpoint, *common, "--json", analysis).exit_code == 0
    suggested = json.loads(analysis.read_text())["metrics"]["angular"]["selected"]
    result = invoke("prune", checkpoint, *common, "-o", tmp_path / "out", *PLAIN)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "layerprune.json").read_text())
    assert report["removed_layers"] == suggested and 2 not in suggested and len(suggested) == 2
    assert report["scoring"]["selection"] == "contiguous" and suggested[1] == suggested[0] + 1
