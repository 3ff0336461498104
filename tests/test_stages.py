"""The public stages (stages.py) composed by hand, as README's "Python API" shows, give what `pipeline.run` gives;
the typed Report round-trips through layerprune.json (and reads older files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hf_layerprune.flow import stages
from hf_layerprune.flow.pipeline import run
from hf_layerprune.recipe import Recipe
from hf_layerprune.report import CutSection, RecipeSection, Report, read_report
from tiny_models import save_word_tokenizer, tiny_model

HERE = Path(__file__).parent


def weights(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("heal", ["linear", "replace"])  # `replace` puts a layer back: heal returns a new cut
def test_stages_composed_by_hand_equal_the_pipeline(tmp_path, heal):
    ckpt = tmp_path / "tiny"
    tiny_model("llama", num_layers=6).save_pretrained(ckpt)
    save_word_tokenizer(ckpt)
    options = dict(model=str(ckpt), drop=2, metric="bi", heal=heal, evaluate=False, calibration_samples=4, seq_len=16,
                   heal_steps=2)
    quiet = lambda message: None  # noqa: E731
    expected = run(Recipe(**options, output_dir=str(tmp_path / "pipeline")), log=quiet)

    recipe = Recipe(**options).resolve_defaults()
    model, tokenizer, source = stages.load(recipe, log=quiet)
    base = stages.SharedBase(model)
    removed, scoring = stages.select(model, tokenizer, recipe, log=quiet)
    cut = stages.cut(model, removed, log=quiet)
    healing, cut = stages.heal(model, tokenizer, recipe, cut, base=base, log=quiet)
    out = tmp_path / "by-hand"
    stages.save(model, tokenizer, recipe, out)
    stages.card(out, Report(source, cut=cut, scoring=scoring, healing=healing,
                            recipe=RecipeSection.from_dict(recipe.to_dict())))

    assert weights(out) == weights(tmp_path / "pipeline")
    assert cut == expected.cut and cut.num_layers_after == (5 if heal == "replace" else 4)
    assert source.num_layers_before == 6 and scoring.selected == removed == expected.scoring.selected
    got = read_report(out)
    assert got["removed_layers"] == expected.cut.removed_layers and got["healing"]["method"] == heal
    assert (out / "README.md").read_text().count(heal) >= 1


def test_report_round_trips_and_reads_an_old_file():
    old = json.loads((HERE / "data" / "old_layerprune.json").read_text())
    report = Report.from_dict(old)
    assert isinstance(report.cut, CutSection) and report.cut.removed_layers == old["removed_layers"]
    assert report.source.base_model == old["base_model"]
    again = report.to_dict()
    assert again == old  # every key kept, known or not
    assert Report.from_dict(again) == report
