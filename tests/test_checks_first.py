"""Every check before any work (issue 21): a mistyped option ends in one `Error:` line before a weight file of the
model is opened. An audit hook (sys.addaudithook, "open" events) records every file opened under the checkpoint
folder while a command runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hf_layerprune.cli import app
from tiny_models import save_word_tokenizer, tiny_model

WATCH: dict[str, object] = {"root": None, "opened": []}


def _audit(event: str, args: tuple) -> None:
    root = WATCH["root"]
    if event == "open" and root is not None and isinstance(args[0], (str, Path)) and str(args[0]).startswith(root):
        WATCH["opened"].append(Path(args[0]).name)


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only while WATCH["root"] is set


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checks") / "ckpt"
    tiny_model("llama", num_layers=4).save_pretrained(path)
    save_word_tokenizer(path)
    return path


def opened_during(ckpt: Path, *args: str) -> tuple[object, list[str]]:
    WATCH["root"], WATCH["opened"] = str(ckpt), []
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        WATCH["root"] = None
    return result, list(WATCH["opened"])


@pytest.mark.parametrize("args, phrase", [
    (["--heal", "distill:adapter=ful"], "adapter"),
    (["--metric", "angular:foo=1"], "foo"),
    (["--heal", "lora:rank=four"], "rank"),
    (["--metric", "nosuch"], "nosuch"),
    (["--tasks", "no_such_task_xyz"], "no_such_task_xyz"),
    (["--dtype", "float13"], "float13"),
])
def test_mistyped_option_fails_before_a_weight_file_is_opened(ckpt, tmp_path, args, phrase):
    result, opened = opened_during(ckpt, "prune", ckpt, "--drop", "1", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and phrase in lines[0], lines
    assert not [name for name in opened if name.endswith(".safetensors")], opened
    assert not (tmp_path / "out").exists()


def test_mistyped_recipe_value_fails_before_a_weight_file_is_opened(ckpt, tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text('drop: "4"\nheal: none\n')
    result, opened = opened_during(ckpt, "prune", ckpt, "--recipe", recipe, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "drop" in result.stderr and result.stderr.startswith("Error:"), result.output
    assert opened == []  # not even config.json: the recipe is checked when it is read


def test_the_watch_sees_a_real_run_open_the_weights(ckpt, tmp_path):
    """The same watch on a good command does record the weights being read (the test above can fail)."""
    result, opened = opened_during(ckpt, "prune", ckpt, "--layers", "1", "--heal", "none", "--no-eval",
                                   "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in opened
