"""Real-model tests on SmolLM2-135M-Instruct (GGUF, 30 layers). Slow: run with `pytest -m slow`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_layerprune.cli import app
from tiny_models import smollm2_gguf

pytestmark = pytest.mark.slow


def test_smollm2_gguf_prunes_and_reloads(tmp_path):
    gguf = smollm2_gguf()
    out = tmp_path / "smol"
    result = CliRunner().invoke(app, ["prune", str(gguf), "--layers", "0,27,29", "-o", str(out), "--heal", "none", "--no-eval"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["num_layers_before"] == 30 and report["num_layers_after"] == 27
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
        plain = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


@pytest.fixture(scope="module")
def smollm2_safetensors(tmp_path_factory):
    """SmolLM2 as a safetensors folder (`--load-in-4bit` reads safetensors shards): the GGUF less its last layer."""
    out = tmp_path_factory.mktemp("smol-st") / "smol29"
    result = CliRunner().invoke(app, ["prune", str(smollm2_gguf()), "--layers", "29", "-o", str(out), "--heal", "none",
                                      "--no-eval"])
    assert result.exit_code == 0, result.output
    return out


def test_smollm2_load_in_4bit_with_qlora_on_both_cpu_paths(smollm2_safetensors, tmp_path, bnb_cpu_path):
    """Real shapes (576 wide, 1536 MLP, 192-wide k/v) through the whole 4-bit route on either bitsandbytes CPU path
    (conftest.bnb_cpu_path): score, cut, QLoRA in place, the 16-bit output written with the adapter merged."""
    out = tmp_path / "q4"
    result = CliRunner().invoke(app, [
        "prune", str(smollm2_safetensors), "--drop", "2", "--load-in-4bit", "--dtype", "float32",
        "--calibration-samples", "4", "--seq-len", "32", "--heal-steps", "2", "--no-eval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["num_layers_after"] == 27 and report["healing"]["method"] == "qlora"
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = AutoTokenizer.from_pretrained(out)("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
