"""`hf-layerprune push`: the whole pipeline, one verified commit, safety checks before any work."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ORG, WRITE_TOKEN
from typer.testing import CliRunner
from transformers import AutoModelForCausalLM

from hf_layerprune.cli import app
from tiny_models import sample_ids, tiny_model

runner = CliRunner()
REPO = f"{ORG}/tiny-pushed"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny-llama"
    tiny_model("llama", num_layers=4).save_pretrained(path)
    return path


def push(*args, token=WRITE_TOKEN):
    extra = ["--token", token] if token else []
    return runner.invoke(app, ["push", *map(str, args), *extra])


def test_push_publishes_a_loadable_model_in_one_commit(hub_server, source, tmp_path):
    out = tmp_path / "local"
    result = push(source, "--layers", "2", "--heal", "none", "--no-eval", "--repo-id", REPO, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{hub_server.url}/{REPO}"
    assert "Verified" in result.stderr
    files = hub_server.files(REPO)
    assert {"config.json", "model.safetensors", "layerprune.json"} <= set(files)
    assert len(hub_server.commits(REPO)) == 2  # the repo's initial commit + ours
    remote = AutoModelForCausalLM.from_pretrained(REPO, dtype=torch.float32)
    local = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(remote(ids).logits, local(ids).logits, atol=0, rtol=0)
    report = json.loads((out / "layerprune.json").read_text())
    assert report["removed_layers"] == [2] and "***" in report["command"]
    for text in (result.stdout, result.stderr, (out / "layerprune.json").read_text()):
        assert WRITE_TOKEN not in text


def test_dry_run_uploads_nothing(hub_server, source, tmp_path):
    out = tmp_path / "local"
    result = push(source, "--layers", "1", "--heal", "none", "--no-eval", "--dry-run", "-o", out, token=None)
    assert result.exit_code == 0, result.output
    assert (out / "layerprune.json").exists()
    assert not hub_server.count("POST", "/api/repos/create")


def test_bad_token_and_existing_model_fail_before_any_work(hub_server, source, tmp_path, pruned_model_dir):
    out = tmp_path / "local"
    result = push(source, "--layers", "1", "--repo-id", REPO, "-o", out, token=None)
    assert result.exit_code == 2 and "HF_TOKEN" in result.stderr
    result = push(source, "--layers", "1", "--repo-id", REPO, "-o", out, token="hf_invalid")
    assert result.exit_code == 2 and "hf_invalid" not in result.output
    assert not out.exists()

    ok = runner.invoke(app, ["upload", str(pruned_model_dir(0)), "--repo-id", REPO, "--token", WRITE_TOKEN, "--no-verify"])
    assert ok.exit_code == 0, ok.output
    result = push(source, "--layers", "1", "--heal", "none", "--no-eval", "--repo-id", REPO, "-o", out)
    assert result.exit_code == 2 and "--exist-ok" in result.stderr
    assert not out.exists()  # refused before pruning

    main_before = hub_server.files(REPO)
    result = push(source, "--layers", "1", "--heal", "none", "--no-eval", "--repo-id", REPO, "-o", out, "--create-pr")
    assert result.exit_code == 0, result.output
    assert hub_server.files(REPO) == main_before  # main untouched
    assert any("pr" in ref for ref in hub_server.refs(REPO)), hub_server.refs(REPO)
