"""Typed errors (issue 33): every raise names its cause, and the CLI prints every class the same way.

| test | expected outcome |
|---|---|
| no bare raise | no module of the package but errors.py raises `LayerPruneError` itself (the detector finds a planted one) |
| the docstring lists every class | each class of errors.py is named in its module docstring |
| every class on the command line | one `Error:` line (a multi-line message joined), exit code 2; a quiet class prints nothing |
| every command is wrapped | each registered command's callback goes through `errors.cli_errors` |
| typical refusals | one cheap case per class raises that class (a `ConfigError` is a `ValueError`) |
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import hf_layerprune
from hf_layerprune.runtime import errors
from hf_layerprune.runtime.errors import (
    CheckpointError,
    ConfigError,
    HubError,
    LayerPruneError,
    OutputError,
    StageError,
    UnsupportedModel,
    cli_errors,
)

PACKAGE = Path(hf_layerprune.__file__).parent


def bare_raises(source: str) -> list[int]:
    """Line numbers of `raise LayerPruneError(...)` / `raise LayerPruneError` / `raise errors.LayerPruneError(...)`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if name == "LayerPruneError":
                out.append(node.lineno)
    return out


def test_no_module_raises_the_bare_base_class():
    assert bare_raises("def f():\n    if x:\n        raise LayerPruneError(\n            'a'\n        )\n") == [3]
    assert bare_raises("raise errors.LayerPruneError\nraise ConfigError('b')\n") == [1]
    found = {f"{path.relative_to(PACKAGE.parent)}:{line}"
             for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "errors.py"
             for line in bare_raises(path.read_text(encoding="utf-8"))}
    assert not found, f"raise the class that says the cause (hf_layerprune/runtime/errors.py), not LayerPruneError: {sorted(found)}"


def error_classes() -> list[type[LayerPruneError]]:
    """Every LayerPruneError subclass the package defines, found in the source (importing every module would pull in
    peft and bitsandbytes at collection) and imported from the modules that define them."""
    defined: dict[str, str] = {}  # class name -> module
    trees = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): ast.parse(path.read_text("utf-8"))
             for path in sorted(PACKAGE.rglob("*.py"))}
    known = {"LayerPruneError"}
    while True:
        found = {node.name: module for module, tree in trees.items() for node in ast.walk(tree)
                 if isinstance(node, ast.ClassDef)
                 and any(getattr(b, "id", getattr(b, "attr", None)) in known for b in node.bases)}
        if set(found) <= set(defined):
            break
        defined.update(found)
        known |= set(found)
    classes = [LayerPruneError] + [getattr(importlib.import_module(module), name) for name, module in defined.items()]
    assert all(issubclass(cls, LayerPruneError) for cls in classes)
    return sorted(classes, key=lambda c: (c.__module__, c.__name__))


def test_the_module_docstring_names_every_class_it_defines():
    defined = [name for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, LayerPruneError) and obj.__module__ == errors.__name__]
    assert len(defined) >= 8
    missing = [name for name in defined if f"``{name}``" not in errors.__doc__]
    assert not missing, f"document {missing} in the errors.py module docstring"


def _command_app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """(a callback keeps `run` a sub-command, as in cli/app.py)"""

    @app.command()
    @cli_errors
    def run() -> None:
        raise exc

    return app


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_is_one_error_line_and_exit_code_2(cls, monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    exc = cls("first line\n  second   line")  # hub_calls.hub_errors re-raises type(exc)(message): one argument
    result = CliRunner().invoke(_command_app(exc), ["run"])
    assert result.exit_code == cls.exit_code == 2, result.output
    assert "Traceback" not in result.output
    if getattr(cls, "quiet", False):  # distributed.RankFailed: rank 0 has printed the reason already
        assert result.stderr == ""
    else:
        assert result.stderr == "Error: first line second line\n"


def test_every_command_goes_through_cli_errors():
    from hf_layerprune.cli import app

    wrapper_code = cli_errors(lambda: None).__code__
    commands = {info.name or info.callback.__name__: info.callback for info in app.registered_commands}
    assert {"prune", "analyze", "evaluate", "card", "upload", "push", "sweep", "collection"} <= set(commands)
    unwrapped = sorted(name for name, callback in commands.items() if callback.__code__ is not wrapper_code)
    assert not unwrapped, f"decorate these commands with @cli_errors (directly under @app.command()): {unwrapped}"


# --- one cheap refusal per class ----------------------------------------------------------------------------------


def test_refusals_raise_the_class_of_their_cause(tmp_path):
    from hf_layerprune.surgery.gguf_export import check_exportable
    from hf_layerprune.surgery.gguf_surgery import read_header
    from hf_layerprune.hub import publish_folder
    from hf_layerprune.recipe import Recipe
    from hf_layerprune.surgery.layers import validate_removed

    with pytest.raises(ConfigError, match="out of range") as err:
        validate_removed([4], 4)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ConfigError, match="recipe file not found"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    garbage = tmp_path / "model.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 20)
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        read_header(garbage)
    with pytest.raises(UnsupportedModel, match="not opt; use --format safetensors") as err:
        check_exportable(type("Config", (), {"model_type": "opt"})())
    assert not isinstance(err.value, ValueError)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("hf_secret123\n")
    with pytest.raises(OutputError, match="contains your Hugging Face token"):
        publish_folder(folder, "user/model", token="hf_secret123")


def test_a_stage_inconsistency_is_a_stage_error():
    import torch

    from hf_layerprune.surgery.streamed_merge import lora_factors

    with pytest.raises(StageError, match="not a LoRA weight"):
        lora_factors({"model.layers.0.mlp.down_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(StageError, match="without their pair"):
        lora_factors({"model.layers.0.mlp.down_proj.lora_A.weight": torch.zeros(2, 2)})


def test_a_hub_dataset_that_cannot_be_loaded_is_a_hub_error(hub_server):
    from hf_layerprune.evaluation.perplexity import load_text_rows

    with pytest.raises(HubError, match="cannot load the perplexity text 'nobody/nothing:plain'"):
        load_text_rows("nobody/nothing:plain")
