"""The registries (registry.py): adding a metric is one file (tests/toy_metric.py) that shows up in `analyze
--metric all`, the CLI help, the card's method description and its references; duplicates are refused; one
option syntax typed from the options dataclass; the docs tables say what the registries hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hf_layerprune.architectures import ARCHITECTURES
from hf_layerprune.card import BIBLIOGRAPHY
from hf_layerprune.flow.finish import rerender
from hf_layerprune.cli import app
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.healing import HEALERS
from hf_layerprune.runtime.registry import Registry, split_spec
from hf_layerprune.report import write_report
from hf_layerprune.scoring import AutoSelection, TargetSelection
from hf_layerprune.scoring import METRICS, get_metric

ROOT = Path(__file__).resolve().parent.parent


def test_a_metric_in_one_file_reaches_analyze_help_and_card(tmp_path):
    from test_card import bare_report
    from tiny_models import tiny_model
    from toy_metric import registered

    checkpoint = tmp_path / "tiny"
    tiny_model("llama", num_layers=4).save_pretrained(checkpoint)
    runner = CliRunner()
    with registered():
        result = runner.invoke(app, ["analyze", str(checkpoint), "--metric", "all", "--drop", "1", "--calibration-samples",
                                     "2", "--seq-len", "8", "--json", str(tmp_path / "scores.json")])
        assert result.exit_code == 0, result.output
        scores = json.loads((tmp_path / "scores.json").read_text())["metrics"]
        assert list(scores)[-1] == "toy" and scores["toy"]["scores"]["per_layer"] == [0.0, 1.0, 2.0, 3.0]
        assert "toy" in result.output
        for command in ("prune", "analyze"):
            text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
            assert "toy (Example et al.: importance grows with depth; options: reverse=False, scale=1.0)" in text, command
        report = bare_report()
        report.update(layers=None, scoring={"metric": "toy", "selection": "topk"})
        out = tmp_path / "out"
        out.mkdir()
        write_report(out, report)
        card = rerender(out, online=False, plots=False).read_text()
        assert "chosen by `toy` (a toy rule that ranks layers by their depth; [Toy depth, Example et al., 2026](https://example.org/toy-depth))" in card
        assert "- [Toy depth, Example et al., 2026](https://example.org/toy-depth)" in card
        assert "@article{example2026toy," in card and "- toy-depth" in card
    assert "toy" not in METRICS and "toy2026" not in BIBLIOGRAPHY
    assert "toy (" not in runner.invoke(app, ["analyze", "--help"], env={"COLUMNS": "400"}).output


def test_options_are_typed_from_the_dataclass_in_one_syntax():
    from toy_metric import registered

    with registered():
        assert get_metric("toy:reverse=yes,scale=2").opts.reverse is True
        assert get_metric("toy:reverse=0:scale=3").config == {"reverse": False, "scale": 3.0}  # the old metric form
        for spec, words in [("toy:reverse=maybe", "reverse='maybe' is not true or false"),
                            ("toy:scale=0", "toy scale must be positive"), ("toy:depth=1", "has no option 'depth'; it takes: reverse, scale"),
                            ("toy:scale", "write NAME:key=value,key=value")]:
            with pytest.raises(ConfigError, match=re.escape(words)) as err:
                get_metric(spec)
            assert "\n" not in str(err.value)
    assert split_spec("lora:targets=q_proj+v_proj,rank=4") == ("lora", {"targets": "q_proj+v_proj", "rank": "4"})
    assert HEALERS.parse("distill:temperature=2,alpha=0.5")[1].alpha == 0.5


def test_duplicates_are_refused_and_unregistering_restores():
    registry = Registry("thing", "--thing", extra=("none",))
    for reg, entry in [(METRICS, METRICS["bi"]), (HEALERS, HEALERS["linear"]), (ARCHITECTURES, ARCHITECTURES["llama"]),
                       (BIBLIOGRAPHY, BIBLIOGRAPHY["lora"])]:
        with pytest.raises(ValueError, match="already registered"):
            reg.register(entry)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(type("T", (), {"name": "none"}))
    with pytest.raises(ConfigError, match="unknown --thing 'x'; use one of none"):
        registry.get_entry("x")


def test_every_cited_key_is_in_the_bibliography_and_capabilities_drive_routes():
    for entry in [*METRICS.values(), *HEALERS.values(), AutoSelection, TargetSelection]:
        for key in (*entry.citations, *getattr(entry, "recipe_citations", ())):
            assert key in BIBLIOGRAPHY, (entry.name, key)
        assert entry.description and entry.tags
    assert METRICS.with_capability("config_only") == ("last", "reverse")
    assert "gradient" not in METRICS.with_capability("streamable")


def table_names(path: Path, header: str) -> list[str]:
    """The names in the first column of the Markdown table whose header row starts with `header`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names += re.findall(r"[`]?([\w]+)[`]?", line.split("|")[1].replace(" (default)", ""))
    return names


def test_docs_tables_list_what_the_registries_hold():
    assert table_names(ROOT / "docs" / "scoring.md", "| `--metric` |") == [AutoSelection.name, *METRICS]
    assert table_names(ROOT / "docs" / "healing.md", "| name | method |") == HEALERS.choices()
    assert sorted(table_names(ROOT / "README.md", "| model_type |")) == sorted(ARCHITECTURES.names(aliases=True))


def test_an_output_format_in_one_file_reaches_format_save_verify_card_and_help(tmp_path):
    """Issue 33: tests/toy_format.py registers `npz`; `prune --format npz` writes it through the save stage, the
    format's verifier checks it there and in `upload`'s folder check, the card shows its usage block and tag, and
    `--help` lists it. Unregistered, `--format npz` is one error line."""
    from tiny_models import save_word_tokenizer, tiny_model
    from toy_format import FILE, registered

    from hf_layerprune.flow.publish import check_model_folder
    from hf_layerprune.runtime.errors import CheckpointError

    checkpoint = tmp_path / "tiny"
    tiny_model("llama", num_layers=4).save_pretrained(checkpoint)
    save_word_tokenizer(checkpoint)
    runner = CliRunner()
    out = tmp_path / "out"
    with registered():
        result = runner.invoke(app, ["prune", str(checkpoint), "--layers", "1", "--heal", "none", "--no-eval",
                                     "--format", "npz", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.glob("*.npz")) == [FILE] and not list(out.glob("*.safetensors"))
        report = json.loads((out / "layerprune.json").read_text())
        assert report["npz"] == {"file": FILE, "tensors": len(tiny_model("llama", num_layers=3).state_dict())}
        card = (out / "README.md").read_text()
        assert f'NumPy: `numpy.load("{FILE}")`' in card and "- npz" in card
        assert check_model_folder(out).cut.removed_layers == [1]
        (out / FILE).write_bytes((out / FILE).read_bytes()[:100])
        with pytest.raises(CheckpointError, match="not a whole .npz archive"):
            check_model_folder(out)
        text = runner.invoke(app, ["prune", "--help"], env={"COLUMNS": "400"}).output
        assert "npz (a NumPy archive of the state dict (toy))" in text
    result = runner.invoke(app, ["prune", str(checkpoint), "--layers", "1", "--heal", "none", "--no-eval",
                                 "--format", "npz", "-o", str(tmp_path / "again")])
    assert result.exit_code == 2 and "unknown --format 'npz'; use one of both, safetensors, gguf" in result.stderr


def test_the_formats_table_lists_what_the_registry_holds():
    from hf_layerprune.runtime.formats import OUTPUT_FORMATS

    assert table_names(ROOT / "docs" / "architecture.md", "| `--format` |") == list(OUTPUT_FORMATS)
