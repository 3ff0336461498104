"""The typed Report: every section a dataclass that reads any layerprune.json written so far and writes it back
exactly; the card renders a Report without the Hub module; a run looks the base card up once and writes
layerprune.json once, never reading it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_layerprune.report import (
    BaseCard,
    Candidate,
    CutSection,
    EvaluationSection,
    HealingSection,
    Report,
    RoundRecord,
    ScoringSection,
    SweepSection,
    Versions,
)

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden" / "reports"
FILES = sorted(GOLDEN.glob("*.json")) + [HERE / "data" / "old_layerprune.json"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_golden_and_old_report_round_trips(path):
    data = json.loads(path.read_text())
    report = Report.from_dict(data)
    again = report.to_dict()
    assert again == data
    for key, value in data.items():  # inside each section the keys keep their order (and their nulls)
        assert json.dumps(again[key]) == json.dumps(value), key
    assert Report.from_dict(again) == report


def test_sections_are_typed_all_the_way_down():
    report = Report.from_dict(json.loads((GOLDEN / "rounds.json").read_text()))
    assert isinstance(report.scoring, ScoringSection) and isinstance(report.healing, HealingSection)
    assert all(isinstance(r, RoundRecord) and isinstance(r.scoring, ScoringSection) for r in report.rounds)
    assert isinstance(report.versions, Versions) and report.versions.items["hf-layerprune"]
    paired = Report.from_dict(json.loads((GOLDEN / "licensed-paired.json").read_text()))
    assert isinstance(paired.evaluation, EvaluationSection) and paired.evaluation.paired.headline.tasks
    assert isinstance(paired.base_card, BaseCard) and paired.base_card.license == "llama2"
    sweep = Report.from_dict(json.loads((GOLDEN / "sweep-tiny-llama-pruned-4L.json").read_text()))
    assert isinstance(sweep.sweep, SweepSection) and {p.num_layers_after for p in sweep.sweep.points} == {4, 5}


def test_a_value_of_the_wrong_type_is_kept_but_never_typed():
    data = json.loads((GOLDEN / "realistic-lora.json").read_text())
    data["healing"]["steps"] = "many"  # hand-edited
    data["scoring"]["calibration"] = "wikitext"
    data["future_section"] = {"x": 1}
    report = Report.from_dict(data)
    assert report.healing.steps is None and report.healing.other["steps"] == "many"
    assert report.scoring.calibration is None and report.other["future_section"] == {"x": 1}
    assert report.to_dict() == data  # nothing lost


def test_code_built_sections_write_todays_keys():
    chosen = ScoringSection.from_dict({"metric": "bi", "selected": [2, 3], "seconds": 1.0})
    auto = chosen.but(metric="auto", chosen_metric="bi", candidates=[Candidate(metrics=["bi"], selected=[2, 3])],
                      judged_with=None)
    assert auto.to_dict() == {"metric": "auto", "selected": [2, 3], "seconds": 1.0, "chosen_metric": "bi",
                              "candidates": [{"metrics": ["bi"], "selected": [2, 3], "held_out_loss": None,
                                              "held_out_kl": None}],
                              "judged_with": None}
    assert list(auto.to_dict()) == ["metric", "selected", "seconds", "chosen_metric", "candidates", "judged_with"]
    assert RoundRecord(round=1, removed_layers=[3]).to_dict() == {"round": 1, "removed_layers": [3]}


def test_rendering_a_card_imports_no_hub_and_no_evaluation_stage(tmp_path):
    """The card package imports neither the Hub module nor torch; a report that names no metric or healer renders
    with neither imported (a metric's or healer's description comes from its registry, which imports torch)."""
    code = f"""
import json, sys
from pathlib import Path
from hf_layerprune.card import render_card
from hf_layerprune.report import Report
loaded = set(sys.modules)
assert "torch" not in loaded and "hf_layerprune.hub" not in loaded, sorted(m for m in loaded if "torch" in m or "hub" in m)
for name in ("bare-streaming", "decilm-attention"):
    out = Path({str(tmp_path)!r}) / name
    out.mkdir()
    render_card(out, Report.from_dict(json.loads((Path({str(GOLDEN)!r}) / (name + ".json")).read_text())), plots=False)
    assert "## " in (out / "README.md").read_text()
print(sorted(m for m in ("torch", "transformers", "hf_layerprune.hub", "hf_layerprune.evaluation") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_card_package_and_hub_do_not_import_each_other():
    code = ("import sys, hf_layerprune.card, hf_layerprune.hub; "
            "print(sorted(m for m in ('hf_layerprune.hub', 'hf_layerprune.card') if m in sys.modules))")
    just_card = subprocess.run([sys.executable, "-c", code.replace(", hf_layerprune.hub;", ";")], capture_output=True,
                               text=True, timeout=120)
    assert just_card.stdout.strip() == "['hf_layerprune.card']", just_card.stderr
    just_hub = subprocess.run([sys.executable, "-c", code.replace("hf_layerprune.card, ", "")], capture_output=True,
                              text=True, timeout=120)
    assert just_hub.stdout.strip() == "['hf_layerprune.hub']", just_hub.stderr


def test_a_run_looks_the_base_card_up_once_and_writes_layerprune_json_once(tmp_path, monkeypatch):
    from hf_layerprune.flow import finish
    from hf_layerprune.flow.pipeline import run
    from hf_layerprune.recipe import Recipe
    from tiny_models import save_word_tokenizer, tiny_model

    ckpt = tmp_path / "tiny"
    tiny_model("llama", num_layers=4).save_pretrained(ckpt)
    save_word_tokenizer(ckpt)
    (ckpt / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    lookups = []
    for name in ("find_base_card", "license_from_card_file"):  # hub's lookups, as the composition calls them
        real = getattr(finish, name)
        monkeypatch.setattr(finish, name, lambda *a, _real=real, _name=name, **k: lookups.append(_name) or _real(*a, **k))
    opened = []
    armed = [True]

    def audit(event, args):
        if armed[0] and event == "open" and str(args[0]).endswith(("layerprune.json", "layerprune.json.tmp")):
            opened.append((Path(str(args[0])).name, args[1]))

    sys.addaudithook(audit)  # hooks cannot be removed: this one records only while armed
    try:
        out = tmp_path / "out"
        report = run(Recipe(model=str(ckpt), layers=[1], heal="linear", evaluate=False, calibration_samples=4,
                            seq_len=16, format="both", gguf_type="Q8_0", output_dir=str(out)), log=lambda m: None)
    finally:
        armed[0] = False
    assert lookups == ["license_from_card_file"]  # the GGUF's metadata and the card share one lookup
    assert opened == [("layerprune.json.tmp", "w")]  # written once, never read back
    written = json.loads((out / "layerprune.json").read_text())
    assert written["base_card"]["license"] == "mit" and report.base_card.license == "mit"
    assert "license: mit" in (out / "README.md").read_text()


def test_replace_returns_a_new_cut_and_leaves_the_given_one():
    from hf_layerprune.healing.base import HealContext

    cut = CutSection(num_layers_after=4, removed_layers=[2, 3], kept_layers=[0, 1, 4, 5])
    ctx = HealContext(model=None, train_ids=None, eval_ids=None, cut=cut)
    assert ctx.removed_and_kept("x") == ([2, 3], [0, 1, 4, 5], 6)
    with pytest.raises(Exception, match="needs the cut section"):
        HealContext(model=None, train_ids=None, eval_ids=None).removed_and_kept("replace")


def test_a_sweep_looks_the_base_card_up_once_for_all_its_variants(tmp_path, monkeypatch):
    from hf_layerprune.flow import finish
    from hf_layerprune.recipe import Recipe
    from hf_layerprune.flow.sweep import run_sweep
    from tiny_models import save_word_tokenizer, tiny_model

    ckpt = tmp_path / "tiny"
    tiny_model("llama", num_layers=4).save_pretrained(ckpt)
    save_word_tokenizer(ckpt)
    (ckpt / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    lookups = []
    real = finish.license_from_card_file
    monkeypatch.setattr(finish, "license_from_card_file", lambda *a, **k: lookups.append(a) or real(*a, **k))
    outs = run_sweep(Recipe(model=str(ckpt), metric="bi", heal="none", evaluate=False, calibration_samples=4,
                            seq_len=16), [1, 2], tmp_path / "sweep", log=lambda m: None)
    assert len(outs) == 2 and len(lookups) == 1
    for out in outs:
        written = json.loads((out / "layerprune.json").read_text())
        assert written["base_card"]["license"] == "mit" and len(written["sweep"]["points"]) == 2
