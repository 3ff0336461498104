"""Our own tools read our own sub-layer (DeciLM) outputs: `evaluate` and `upload` load them with the package's
classes (no --trust-remote-code, the folder's code never runs), `evaluate` checks MODEL before it spends minutes on
the base, and the closing lines name the removed sub-layers."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import ORG, WRITE_TOKEN
from typer.testing import CliRunner

from hf_layerprune.cli import app
from tiny_models import VOCAB, save_word_tokenizer, tiny_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sublayer_out(tmp_path_factory):
    """A tiny Llama, a text file, and its attention-only cut (layers 1 and 2 lose their attention)."""
    root = tmp_path_factory.mktemp("sublayer")
    src = root / "src"
    tiny_model("llama", num_layers=4).save_pretrained(src)
    save_word_tokenizer(src)
    text = root / "text.txt"
    text.write_text(" ".join(f"w{3 + (i * 7) % (VOCAB - 3)}" for i in range(2000)), encoding="utf-8")
    out = root / "out"
    result = invoke("prune", src, "--granularity", "attention", "--layers", "1,2", "--heal", "none", "--no-eval",
                    "-o", out)
    assert result.exit_code == 0, result.output
    return src, text, out, result


def folder_code_imported(name: str) -> bool:
    return any(m.startswith("transformers_modules") and name in m for m in sys.modules)


def test_summary_and_last_line_name_the_removed_sublayers(sublayer_out):
    *_, result = sublayer_out
    assert result.stderr.strip().splitlines()[-1].endswith("4 -> 4 layers, removed attention of [1, 2]")
    assert "attention of [1, 2] (2 of 4)" in result.output


def test_evaluate_loads_our_decilm_output_with_the_package_classes(sublayer_out, tmp_path):
    src, text, out, _ = sublayer_out
    copy = tmp_path / "evaluated"
    shutil.copytree(out, copy)
    result = invoke("evaluate", copy, "--base", src, "--tasks", "none", "--perplexity", text, "--seq-len", "32",
                    "--no-speed")
    assert result.exit_code == 0, result.output
    ppl = json.loads((copy / "layerprune.json").read_text())["evaluation"]["perplexity"]
    assert ppl["base"]["perplexity"] != ppl["pruned"]["perplexity"]  # two different models were measured
    assert not folder_code_imported("evaluated")  # the folder's modeling_decilm.py never ran


def test_evaluate_refuses_foreign_code_before_the_base_is_evaluated(sublayer_out, tmp_path):
    src, text, out, _ = sublayer_out
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    with open(foreign / "modeling_decilm.py", "a", encoding="utf-8") as f:
        f.write("\nprint('not the package code')\n")
    result = invoke("evaluate", foreign, "--base", src, "--tasks", "none", "--perplexity", text, "--no-speed")
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and "needs code of its own" in last and "--trust-remote-code" in last
    assert "Loading" not in result.output and "Perplexity" not in result.output  # nothing was loaded or measured


def test_upload_verifies_a_sublayer_output_without_remote_code(hub_server, sublayer_out):
    *_, out, _ = sublayer_out
    repo = f"{ORG}/tiny-attention-cut"
    result = invoke("upload", out, "--repo-id", repo, "--token", WRITE_TOKEN)
    assert result.exit_code == 0, result.output
    assert "Verified" in result.stderr and "max |diff| 0" in result.stderr
    assert {"modeling_decilm.py", "configuration_decilm.py", "config.json"} <= set(hub_server.files(repo))
    assert not folder_code_imported("tiny-attention-cut")


def test_evaluate_loads_a_published_sublayer_output_from_the_hub(hub_server, sublayer_out, tmp_path):
    src, text, out, _ = sublayer_out
    repo = f"{ORG}/tiny-attention-cut-hub"
    assert invoke("upload", out, "--repo-id", repo, "--token", WRITE_TOKEN).exit_code == 0
    result = invoke("evaluate", repo, "--base", src, "--tasks", "none", "--perplexity", text, "--seq-len", "32",
                    "--no-speed", "--json", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "eval.json").read_text())
    assert section["perplexity"]["pruned"]["perplexity"] != section["perplexity"]["base"]["perplexity"]
    assert not folder_code_imported("tiny_attention_cut_hub") and not folder_code_imported("tiny-attention-cut-hub")
