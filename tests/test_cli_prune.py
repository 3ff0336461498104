"""`hf-layerprune prune`: end to end on tiny checkpoints, and every bad input refused cleanly."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hf_layerprune.cli import app
from tiny_models import sample_ids, skipped_reference_logits, tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "llama"
    tiny_model("llama", num_layers=6).save_pretrained(path)
    return path


FAST = ("--heal", "none", "--no-eval")  # the cut alone (defaults heal and evaluate)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(directory):
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def test_prune_layers_writes_loadable_model_and_report(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = invoke("prune", checkpoint, "--layers", "0,4-5", "--output-dir", out, *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["base_model"] == "./llama"  # a local path is published by name, with its hashes (provenance)
    assert set(report["provenance"]["base_model"]["files"]) >= {"config.json", "model.safetensors"}
    assert report["num_layers_before"] == 6 and report["num_layers_after"] == 3
    assert report["removed_layers"] == [0, 4, 5] and report["kept_layers"] == [1, 2, 3]
    assert report["parameters_after"] < report["parameters_before"]
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_prune_drop_uses_a_rule_and_overwrite_replaces(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / "layerprune.json").write_text("{}")  # an earlier output: the only kind --overwrite replaces
    result = invoke("prune", checkpoint, "--drop", "2", "--metric", "last", "-o", out, "--overwrite", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["removed_layers"] == [3, 4]  # Gromov: deepest layers before the final one
    assert not (out / "stale.txt").exists()


def test_recipe_file_with_flag_override(checkpoint, tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text(f"model: {checkpoint}\nlayers: [1, 2]\nmax_shard_size: 10KB\n")
    out = tmp_path / "out"
    result = invoke("prune", checkpoint, "--recipe", recipe, "--layers", "3", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["removed_layers"] == [3]
    assert report["recipe"]["max_shard_size"] == "10KB"
    assert (out / "model.safetensors.index.json").exists()


BAD_INPUTS = [
    (["--drop", "6"], "smaller than the number of layers"),
    (["--drop", "0"], "at least 1"),
    (["--layers", "6"], "out of range"),
    (["--layers", "-1"], "out of range"),
    (["--layers", "2,2"], "repeated"),
    (["--layers", "x"], "cannot read --layers"),
    (["--drop", "1", "--layers", "2"], "not several"),
    ([], "--drop N or --layers"),
    (["--layers", "0-5"], "cannot remove all"),
    (["--layers", "1", "--granularity", "heads"], "unknown --granularity"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_selection_is_refused_without_writing(checkpoint, tmp_path, args, message):
    before = snapshot(tmp_path)
    result = invoke("prune", checkpoint, *args, "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_missing_path_and_existing_output(checkpoint, tmp_path):
    result = invoke("prune", tmp_path / "nope", "--layers", "1", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "model path not found" in result.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = invoke("prune", checkpoint, "--layers", "1", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert snapshot(tmp_path) == ["out", "out/keep.txt"]


def test_unknown_architecture_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    before = snapshot(tmp_path)
    for args in (["--layers", "1"], ["--drop", "1", "--metric", "last", "--dtype", "float32", "--eval"]):
        result = invoke("prune", tmp_path / "gpt2", *args, "-o", tmp_path / "out", *FAST)
        assert result.exit_code == 2, result.output
        assert "unsupported architecture model_type='gpt2'" in result.stderr and "llama" in result.stderr
    assert snapshot(tmp_path) == before


def test_pickle_only_checkpoint_needs_allow_pickle(tmp_path):
    model = tiny_model("llama", num_layers=4)
    src = tmp_path / "pickled"
    model.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    before = snapshot(tmp_path)
    result = invoke("prune", src, "--layers", "1", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "--allow-pickle" in result.stderr
    assert snapshot(tmp_path) == before
    result = invoke("prune", src, "--layers", "1", "--allow-pickle", "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "layerprune.json").read_text())
    assert report["route"] == "in-memory"
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert reloaded.config.num_hidden_layers == 3 and not info["missing_keys"]
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, skipped_reference_logits(model, [1], ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("route", ["in-memory", "streaming"])
def test_outputs_get_the_modes_the_umask_gives(checkpoint, tmp_path, route):
    """transformers' save_pretrained writes shards through mkstemp (0600) and the staging folder is a mkdtemp
    (0700): the finished output must be as readable as anything else the user writes (here umask 022)."""
    import os
    import stat

    import shutil

    from tiny_models import save_word_tokenizer

    source = tmp_path / "src"
    shutil.copytree(checkpoint, source)
    save_word_tokenizer(source)
    out = tmp_path / "out"
    extra = ("--heal", "linear", "--no-eval") if route == "in-memory" else FAST
    old = os.umask(0o022)
    try:
        result = invoke("prune", source, "--layers", "4", "--calibration-samples", "2", "--seq-len", "8",
                        "-o", out, *extra)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "layerprune.json").read_text())["route"] == route
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}
