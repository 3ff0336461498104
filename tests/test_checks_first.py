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
    # issue 33: option values outside their declared range (registry.option), refused when --heal is read
    (["--heal", "lora:rank=0"], "rank=0 must be at least 1"),
    (["--heal", "lora:dropout=5"], "dropout=5.0 must be at least 0 and less than 1"),
    (["--heal", "distill:temperature=0"], "temperature"),
    (["--heal", "absorb:max_grad_norm=-1"], "max_grad_norm"),
    (["--heal", "linear:ridge=-1"], "ridge"),
    (["--heal", "replace:mode=xyz"], "mse, lm"),
    (["--heal", "linear+lora:rank=0"], "rank"),
    (["--metric", "shapley:subnetworks=-3"], "subnetworks"),
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


# --- issue 33: every refusal before anything is downloaded or loaded -------------------------------------------------


def test_a_missing_output_dir_is_said_before_the_task_index_is_built(ckpt, monkeypatch):
    import hf_layerprune.evaluation as evaluation

    asked = []
    monkeypatch.setattr(evaluation, "check_tasks", lambda *a, **k: asked.append(a))
    result, opened = opened_during(ckpt, "prune", ckpt, "--drop", "1")
    assert result.exit_code == 2 and "--output-dir" in result.stderr, result.output
    assert asked == [] and opened == []  # neither lm-eval's task index nor any file of the model


def test_options_come_from_the_recipe_fields_too_and_are_checked_with_them(ckpt, tmp_path):
    """`--lora-rank` fills `rank` of every healer of the chain that takes it; the merged options are checked at once."""
    from hf_layerprune.healing import heal_chain
    from hf_layerprune.recipe import Recipe

    chain = heal_chain("linear:ridge=0.01+lora", Recipe(model="m", drop=1, lora_rank=4, heal_steps=3))
    assert [step.name for step in chain] == ["linear", "lora"]
    assert chain[0].options.ridge == 0.01 and chain[1].options.rank == 4 and chain[1].options.steps == 3
    assert chain[0].options.rank is None and "rank" in chain[0].unused  # linear's `rank` is not --lora-rank's
    result, opened = opened_during(ckpt, "prune", ckpt, "--drop", "1", "--heal", "lora:lora_alpha=-2",
                                   "--lora-rank", "4", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "lora_alpha" in result.stderr and opened == [], result.output


def test_every_number_and_word_option_declares_what_it_accepts():
    """A healer or metric option that is a number or a fixed word has a declared range (registry.option), so that
    a value no run can use is refused when the option is read, not after the model is loaded (issue 33)."""
    import dataclasses
    import typing

    from hf_layerprune.healing import HEALERS
    from hf_layerprune.runtime.registry import options_of
    from hf_layerprune.scoring import METRICS

    missing = []
    for registry in (HEALERS, METRICS):
        for name in registry.names():
            cls = options_of(registry[name])
            if cls is None:
                continue
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                kinds = set(typing.get_args(hints[f.name]) or (hints[f.name],)) - {type(None)}
                if f.init and kinds & {int, float} and bool not in kinds and "bounds" not in f.metadata:
                    missing.append(f"{name}.{f.name}")
    assert missing == []


def test_a_hub_source_target_is_checked_from_its_config_before_any_weight_is_downloaded(hub_server, tmp_path):
    from conftest import ORG, WRITE_TOKEN
    from huggingface_hub import HfApi

    src = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(src)
    save_word_tokenizer(src)
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(f"{ORG}/tiny4")
    api.upload_folder(repo_id=f"{ORG}/tiny4", folder_path=str(src))
    hub_server.requests.clear()
    result = CliRunner().invoke(app, ["prune", f"{ORG}/tiny4", "--drop", "9", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "--drop 9 must be smaller than the number of layers (4)" in result.stderr
    fetched = [r["path"] for r in hub_server.requests if r["method"] in ("GET", "HEAD") and "/resolve/" in r["path"]]
    assert fetched and all(path.endswith("/config.json") for path in fetched), fetched  # the config alone
    assert not (tmp_path / "out").exists()
