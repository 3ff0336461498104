"""Layer-streamed scoring (--offload) gives the same scores and selections as in-memory scoring."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hf_layerprune.cli import app
from hf_layerprune.surgery.layer_stream import StreamedModel
from hf_layerprune.scoring import get_metric, run_metric
from hf_layerprune.scoring.base import ScoringContext
from hf_layerprune.scoring.streamed import StreamedScoringContext
from tiny_models import sample_ids, tiny_model


@pytest.mark.parametrize("family", ["llama", "qwen3", "opt"])
@pytest.mark.parametrize("metric", ["angular", "bi", "cosine", "shapley", "ppl"])
def test_streamed_scores_equal_in_memory(family, metric, tmp_path):
    model = tiny_model(family, num_layers=5)
    model.save_pretrained(tmp_path)
    batches = torch.cat([sample_ids(batch=2, length=10, seed=s) for s in range(2)])
    memory = run_metric(get_metric(metric), ScoringContext(model, batches, batch_size=2), drop=2)
    streamed_ctx = StreamedScoringContext(StreamedModel(tmp_path, dtype=torch.float32), batches, batch_size=2)
    streamed = run_metric(get_metric(metric), streamed_ctx, drop=2)
    assert streamed["selected"] == memory["selected"]
    a, b = memory["scores"], streamed["scores"]
    for key in a:
        if key in ("per_layer",):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5)
        elif key == "blocks":
            for n in a[key]:
                assert a[key][n] == pytest.approx(b[key][n], rel=1e-4, abs=1e-5)


def test_offload_prune_never_loads_the_model(tmp_path, monkeypatch):
    model = tiny_model("llama", num_layers=6)
    src = tmp_path / "src"
    model.save_pretrained(src)
    corpus = tmp_path / "calib.txt"
    corpus.write_text(" ".join(f"w{i % 97}" for i in range(4000)))
    import hf_layerprune.flow.stages as stages

    def refuse(*a, **k):
        raise AssertionError("the model must not be loaded in memory with --offload")

    monkeypatch.setattr(stages, "load_model", refuse)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(src), "--drop", "2", "--metric", "bi", "--offload", "--heal", "none",
                                      "--no-eval", "--calibration", "self", "--calibration-samples", "4", "--seq-len", "16",
                                      "-o", str(out)])
    assert result.exit_code == 2 and "--offload" in result.stderr  # `self` text needs the model to generate
    result = CliRunner().invoke(app, ["prune", str(src), "--drop", "2", "--metric", "gradient", "--offload", "--heal", "none",
                                      "--no-eval", "-o", str(out)])
    assert result.exit_code == 2 and "backward" in result.stderr
    assert not out.exists()


def test_offload_prune_streams_scoring_and_surgery(pruned_model_dir, tmp_path, monkeypatch):
    """--offload --heal none --no-eval: scored and cut on disk; the model is never built in memory."""
    import hf_layerprune.flow.stages as stages

    def refuse(*a, **k):
        raise AssertionError("the model must not be loaded in memory with --offload")

    monkeypatch.setattr(stages, "load_model", refuse)
    corpus = tmp_path / "calib.txt"
    corpus.write_text(" ".join(f"w{i % 97}" for i in range(3000)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(pruned_model_dir(0)), "--drop", "1", "--metric", "ppl", "--offload",
                                      "--heal", "none", "--no-eval", "--calibration", str(corpus),
                                      "--calibration-samples", "4", "--seq-len", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["route"] == "streaming" and report["scoring"]["offload"] is True
    assert report["scoring"]["metric"] == "ppl" and len(report["removed_layers"]) == 1
