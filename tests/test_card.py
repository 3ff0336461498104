"""Model card rendering from layerprune.json alone: metadata, license inheritance, escaping, optional sections."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_layerprune.card import code, codeblock, md
from hf_layerprune.flow.finish import rerender
from hf_layerprune.hub import find_base_card
from hf_layerprune.runtime.errors import LayerPruneError
from hf_layerprune.flow.finish import card
from hf_layerprune.report import Report, read_report, write_report


def _task(acc, acc_norm=None, n=500, shot=0, limit=None):
    rec = lambda v: {"value": v, "stderr": 0.01, "n_shot": shot, "limit": limit, "samples": n, "samples_total": n,  # noqa: E731
                     "version": 1.0, "higher_is_better": True}
    out = {"acc": rec(acc)}
    if acc_norm is not None:
        out["acc_norm"] = rec(acc_norm)
    return out


def realistic_report(**overrides):
    """What a full `prune --drop 8 --heal lora --eval` run on Llama-2-7B writes (numbers made up but plausible)."""
    L, removed = 32, list(range(21, 29))
    base = {"arc_easy": _task(0.7626, 0.7458, 2376), "arc_challenge": _task(0.4334, 0.4625, 1172),
            "hellaswag": _task(0.5716, 0.7600, 10042), "boolq": _task(0.7774, None, 3270)}
    pruned = {"arc_easy": _task(0.6881, 0.6532, 2376), "arc_challenge": _task(0.3805, 0.4113, 1172),
              "hellaswag": _task(0.5012, 0.6699, 10042), "boolq": _task(0.7162, None, 3270)}
    ppl = lambda v: {"perplexity": v, "nll": math.log(v), "tokens": 340000, "tokens_total": 341469, "windows": 667,  # noqa: E731
                     "seq_len": 512, "stride": 512, "max_tokens": None, "source": "wikitext:wikitext-2-raw-v1:test"}
    speed = lambda layers, tps: {"device": "cuda:0", "dtype": "bfloat16", "batch_size": 1, "prompt_len": 128,  # noqa: E731
                                 "decode_tokens": 32, "parameters": 6738415616 * layers // 32, "num_layers": layers,
                                 "prefill_tokens_per_s": tps * 200, "decode_tokens_per_s": tps,
                                 "decode_ms_per_token": 1000 / tps, "peak_memory_bytes": 13_900_000_000 * layers // 32,
                                 "peak_memory_kind": "cuda_max_allocated", "kv_cache_bytes_per_token": 16384 * layers}
    report = {
        "format_version": 1,
        "tool": {"name": "hf-layerprune", "version": "0.1.0"},
        "command": "hf-layerprune prune meta-llama/Llama-2-7b-hf --drop 8 --heal lora --eval -o llama2-24L",
        "base_model": "meta-llama/Llama-2-7b-hf",
        "base_revision": "01c7f73d771dfac7d292323805ebc428287df4f9",
        "model_type": "llama", "dtype": "bfloat16", "granularity": "block",
        "num_layers_before": L, "num_layers_after": L - len(removed),
        "removed_layers": removed, "kept_layers": [i for i in range(L) if i not in removed],
        "parameters_before": 6738415616, "parameters_after": 5120704512,
        "recipe": {"model": "meta-llama/Llama-2-7b-hf", "output_dir": "llama2-24L", "drop": 8, "metric": "angular",
                   "calibration": "allenai/c4:en:validation", "heal": "lora", "heal_steps": 500, "evaluate": True},
        "scoring": {"metric": "angular", "selection": "contiguous", "granularity": "block",
                    "higher_is_more_important": True,
                    "calibration": {"source": "allenai/c4:en:validation", "kind": "hub", "samples": 64, "seq_len": 1024,
                                    "seed": 0},
                    "scores": {"per_layer": [round(0.9 - 0.8 * math.sin(math.pi * i / 31), 4) for i in range(L)],
                               "blocks": {"8": [round(0.5 - 0.3 * math.sin(math.pi * i / 24), 4) for i in range(25)]}},
                    "selected": removed},
        "healing": {"method": "lora", "steps": 500, "tokens": 16384000, "seconds": 2710.5, "learning_rate": 3e-4,
                    "lora_rank": 8, "targets": ["down_proj", "gate_proj", "up_proj"],
                    "data": {"source": "HuggingFaceFW/fineweb-edu", "kind": "hub"},
                    "losses": [3.2 * math.exp(-i / 30) + 1.9 for i in range(100)], "loss_before": 5.1, "loss_after": 1.93},
        "evaluation": {
            "settings": {"harness": "lm-eval", "lm_eval_version": "0.4.13", "tasks": list(base), "num_fewshot": None,
                         "limit": None, "batch_size": 16, "perplexity": "wikitext", "seq_len": 512,
                         "device": "cuda:0", "dtype": "bfloat16"},
            "base": base, "pruned": pruned,
            "perplexity": {"base": ppl(5.47), "pruned": ppl(8.21)},
            "speed": {"base": speed(32, 41.2), "pruned": speed(24, 53.9)},
        },
        "versions": {"hf-layerprune": "0.1.0", "torch": "2.13.0", "transformers": "5.23.0"},
        "timings": {"load": 20.1, "score": 41.2},
    }
    report.update(overrides)
    return report


def bare_report():
    """What `prune MODEL --layers 2,3 --heal none --no-eval` writes through the streaming route."""
    return {
        "format_version": 1, "tool": {"name": "hf-layerprune", "version": "0.1.0"},
        "command": "hf-layerprune prune ./tiny --layers 2,3 -o cut", "base_model": "./tiny", "base_revision": None,
        "granularity": "block", "model_type": "llama", "dtype": "float32", "parameters_before": 100000,
        "num_layers_before": 6, "num_layers_after": 4, "removed_layers": [2, 3], "kept_layers": [0, 1, 4, 5],
        "parameters_after": 70000, "route": "streaming",
        "recipe": {"model": "./tiny", "layers": [2, 3], "heal": "none", "evaluate": False},
        "versions": {"hf-layerprune": "0.1.0"}, "timings": {"cut": 0.1},
    }


def write(tmp_path: Path, report: dict, name: str = "out") -> Path:
    out = tmp_path / name
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, json.loads(json.dumps(report)))
    return out


def front_matter(text: str) -> str:
    assert text.startswith("---\n")
    return text[4: text.index("\n---\n", 4)]


def html_of(text: str) -> str:
    from markdown_it import MarkdownIt

    body = text[text.index("\n---\n", 4) + 5:]
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(body)


# ------------------------------------------------------------------------------------------- metadata
def test_card_metadata_parses_and_eval_results_round_trip(tmp_path):
    report = realistic_report(base_card={"license": "llama2", "source": "https://huggingface.co/meta-llama/Llama-2-7b-hf"})
    out = write(tmp_path, report)
    path = rerender(out, repo_id="alice/Llama-2-7b-24L", online=False)
    card = ModelCard.load(path)
    data = card.data
    assert data.base_model == "meta-llama/Llama-2-7b-hf"
    assert data.to_dict()["base_model_relation"] == "finetune"
    assert data.license == "llama2"
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"layer-pruning", "angular-distance", "lora"} <= set(data.tags)
    assert data.datasets == ["allenai/c4", "HuggingFaceFW/fineweb-edu"]
    assert "model-index" in data.to_dict() and data.model_name == "alice/Llama-2-7b-24L"
    got = {(r.dataset_name, r.metric_type): r for r in data.eval_results}
    names = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag", "boolq": "BoolQ"}
    for task, metrics in report["evaluation"]["pruned"].items():
        for metric, rec in metrics.items():
            result = got.pop((names[task], metric))
            assert result.metric_value == round(rec["value"], 4)
            assert result.dataset_args == {"num_few_shot": 0} and result.task_type == "text-generation"
    assert [(k, r.metric_value, r.dataset_type) for k, r in got.items()] == [
        (("WikiText-2 (raw)", "perplexity"), 8.21, "wikitext")]
    # plots are files next to the card, linked relatively
    for png in ("layerprune_scores.png", "layerprune_healing_loss.png", "layerprune_evaluation.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in card.text
    body = card.text
    assert "21–28" in body and "`[21, 22, 23, 24, 25, 26, 27, 28]`" in body and "0–20, 29–31" in body
    assert "trust_remote_code" not in body
    assert "gromov2024unreasonable" in body and "hu2021lora" in body
    assert "76.3 ± 1.0" in body and "68.8 ± 1.0" in body and "−7.4 pts" in body and "90.2%" in body


def test_bare_report_renders_without_optional_sections(tmp_path):
    out = write(tmp_path, bare_report())
    text = rerender(out, online=False).read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.license is None and "license" not in front_matter(text)  # unknown: omitted, never guessed
    assert card.data.base_model is None  # a local path is no Hub id
    assert "model-index" not in front_matter(text) and card.data.eval_results is None
    for absent in ("## Healing", "## Evaluation", "### Speed", "## Citation", ".png", "apache-2.0"):
        assert absent not in text, absent
    assert "**not healed**" in text and "could not be determined" in text and "`[2, 3]`" in text
    assert "has not been benchmarked" in text
    assert not re.search(r"\n{3,}", text)


def test_rerender_from_report_alone_is_deterministic(tmp_path):
    out = write(tmp_path, realistic_report(base_card={"license": "apache-2.0", "source": "test"}))
    first = rerender(out, online=False).read_text()
    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    for p in list(out.glob("*.png")) + [out / "README.md"]:
        p.unlink()
    assert sorted(p.name for p in out.iterdir()) == ["layerprune.json"]  # no weights, no config: the report is enough
    second = rerender(out, online=False).read_text()
    assert first == second
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == pngs
    # dropping a section from the report drops its plot on the next render
    report = read_report(out)
    del report["healing"]
    write_report(out, report)
    rerender(out, online=False)
    assert not (out / "layerprune_healing_loss.png").exists()


def test_card_cli(tmp_path):
    from typer.testing import CliRunner

    from hf_layerprune.cli import app

    out = write(tmp_path, bare_report())
    result = CliRunner().invoke(app, ["card", str(out), "--offline", "--repo-id", "alice/tiny-cut"])
    assert result.exit_code == 0, result.output
    assert ModelCard.load(out / "README.md").data is not None
    assert 'model_id = "alice/tiny-cut"' in (out / "README.md").read_text()
    missing = CliRunner().invoke(app, ["card", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "layerprune.json" in missing.output


# ------------------------------------------------------------------------------------------- license
BASE_README = """---
license: other
license_name: acme-community-license
license_link: LICENSE
language:
- en
- fr
extra_gated_prompt: You agree to the ACME terms.
---

# Base model
"""


def test_license_inherited_from_local_base_card_with_custom_name_and_link(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text(BASE_README)
    report = bare_report()
    report["base_model"] = str(base)
    out = tmp_path / "out"
    out.mkdir()
    (out / "LICENSE").write_text("ACME license text")  # copied beside the weights by the pipeline
    card(out, Report.from_dict(report))  # the composition's step: the base card looked up while the path exists
    text = (out / "README.md").read_text()
    data = ModelCard.load(out / "README.md").data
    assert (data.license, data.license_name, data.license_link) == ("other", "acme-community-license", "LICENSE")
    assert data.language == ["en", "fr"]
    assert "gated" in text and "acme-community-license" in text
    # remembered in the report: a later render works with the base model gone
    assert read_report(out)["base_card"]["license_name"] == "acme-community-license"
    (base / "README.md").unlink()
    (out / "LICENSE").unlink()
    data = ModelCard.load(rerender(out, online=False)).data
    assert (data.license, data.license_name) == ("other", "acme-community-license")
    assert data.license_link is None  # a relative link to a file that is not there is dropped


def test_license_from_hub_card_data_and_relative_link(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub

    calls = []

    def fake_model_info(self, repo_id, revision=None, expand=None, **kw):
        calls.append((repo_id, revision, tuple(expand or ())))
        return SimpleNamespace(card_data={"license": "other", "license_name": "llama3", "license_link": "LICENSE"},
                               gated="manual")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_model_info)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    report = realistic_report(base_model="meta-llama/Meta-Llama-3-8B", base_revision="b" * 40)
    info = find_base_card(report["base_model"], report["base_revision"])
    assert info["license_name"] == "llama3" and info["gated"] is True
    out = write(tmp_path, report)
    before = read_report(out)
    data = ModelCard.load(rerender(out)).data
    assert read_report(out) == before  # rendering never changes the report ...
    rerender(out, remember=True)  # ... unless asked to remember the license (`card` does)
    assert data.license == "other" and data.license_name == "llama3"
    assert data.license_link == f"https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/{'b' * 40}/LICENSE"
    assert calls and calls[0][0] == "meta-llama/Meta-Llama-3-8B"
    # offline: no Hub call; the license recorded in the report is used
    calls.clear()
    data = ModelCard.load(rerender(out, online=False)).data
    assert data.license_name == "llama3" and not calls


def test_license_from_explicit_card_file_and_never_a_default(tmp_path):
    card_file = tmp_path / "BASE.md"
    card_file.write_text("---\nlicense: cc-by-nc-4.0\n---\n# x\n")
    out = write(tmp_path, bare_report())
    assert ModelCard.load(rerender(out, base_card=card_file, online=False)).data.license == "cc-by-nc-4.0"
    with pytest.raises(LayerPruneError, match="not found"):
        rerender(out, base_card=tmp_path / "missing.md")


# ------------------------------------------------------------------------------------------- escaping
HOSTILE = 'evil/model"\n---\nlicense: mit\n<script>alert(1)</script> {{ 7*7 }} [x](javascript:alert(1)) | `tick`'


def test_hostile_strings_cannot_break_metadata_or_inject_markup(tmp_path):
    report = realistic_report(base_card={"license": "llama2", "source": HOSTILE})
    report["base_model"] = HOSTILE
    report["model_type"] = "<img src=x onerror=alert(1)>"
    report["command"] = "hf-layerprune prune x ```\n<script>alert(2)</script>\n``` {{ 7*7 }}"
    report["scoring"]["calibration"]["source"] = "<script>alert(3)</script>"
    report["healing"]["targets"] = ["q_proj` <b>bold</b> `"]
    report["healing"]["method"] = "lora<svg onload=alert(4)>"
    report["evaluation"]["pruned"]["x|y<b>"] = _task(0.5)
    report["evaluation"]["base"]["x|y<b>"] = _task(0.6)
    report["versions"] = {"torch": "2.13 <iframe src=evil>"}
    report["hub"] = {"repo_id": "alice/model\n---\nlicense: mit"}
    out = write(tmp_path, report)
    text = rerender(out, online=False).read_text()

    card = ModelCard.load(out / "README.md")
    assert card.data.license == "llama2"  # the injected "license: mit" never became metadata
    assert card.data.base_model is None  # not a valid Hub id
    assert "license: mit" not in front_matter(text)
    assert text.count("\n---\n") == 1  # exactly one closing delimiter of the YAML header

    html = html_of(text)
    for bad in ("<script", "<img src=x", "<svg", "<iframe", "<b>", 'href="javascript'):
        assert bad not in html, bad  # only escaped forms (&lt;script ...) survive
    assert "{{ 7*7 }}" in html  # shown literally, never evaluated
    # the command's own fence cannot close the code block it is shown in
    assert re.search(r"````+bash\n.*<script>alert\(2\)</script>", text, re.S)
    # a pipe in a task name does not split the table row
    row = next(line for line in text.splitlines() if "x\\|y" in line)
    assert row.count(" | ") == 7


def test_escaping_helpers():
    assert str(md("a_b*c|d<e>&f{{x}}")) == r"a\_b\*c\|d&lt;e&gt;&amp;f\{\{x\}\}"
    assert str(md("two\nlines")) == "two lines"
    assert str(code("has ` tick")) == "`` has ` tick ``"
    block = str(codeblock("```\nx\n```", "bash"))
    assert block.startswith("````bash\n") and block.endswith("\n````")


# ------------------------------------------------------------------------------------------- variants
def test_sublayer_decilm_card_mentions_remote_code_and_kv_saving(tmp_path):
    report = bare_report()
    report.update(granularity="attention", removed_layers=[], kept_layers=list(range(6)), num_layers_after=6,
                  removed_sublayers={"attention": [2, 3, 4], "mlp": []},
                  export={"format": "decilm", "trust_remote_code": True,
                          "kv_cache_bytes_per_token": {"before": 6 * 4096, "after": 3 * 4096}})
    out = write(tmp_path, report)
    text = rerender(out, online=False).read_text()
    assert "trust_remote_code=True" in text and "DeciLMForCausalLM" in text
    assert "24.00 KiB → 12.00 KiB" in text and "−50.0%" in text
    assert "`[2, 3, 4]`" in text and "attention-pruning" in front_matter(text)


@pytest.mark.parametrize("metric,selection,healer,expected,unexpected", [
    ("bi", "topk", "bias", {"men2024shortgpt", "siddiqui2024deeper"}, {"gromov2024unreasonable"}),
    ("ppl", "topk", "none", {"song2024sleb", "kim2024shortened"}, {"hu2021lora"}),
    ("gradient", "greedy", "projection", {"liu2026gradmap"}, set()),
    ("cosine", "contiguous", "replace", {"chen2024streamlining"}, set()),
    ("taylor", "topk", "linear", {"kim2024shortened", "shopkhoev2025replaceme"}, set()),
    ("random", "topk", "none", set(), {"@article"}),
])
def test_citations_follow_metric_and_healer(tmp_path, metric, selection, healer, expected, unexpected):
    report = realistic_report(base_card={"license": "mit", "source": "t"})
    report["scoring"].update(metric=metric, selection=selection)
    if healer == "none":
        del report["healing"]
    else:
        report["healing"]["method"] = healer
    text = rerender(write(tmp_path, report), online=False).read_text()
    for key in expected:
        assert f"{{{key}," in text, key
    for key in unexpected:
        assert key not in text, key


def test_limit_and_pruned_only_evaluation(tmp_path):
    report = realistic_report(base_card={"license": "mit", "source": "t"})
    ev = report["evaluation"]
    ev["base"] = None
    ev["settings"]["limit"] = 20
    for metrics in ev["pruned"].values():
        for rec in metrics.values():
            rec.update(limit=20, samples=20)
    ev["speed"]["base"] = None
    ev["perplexity"]["base"] = None
    text = rerender(write(tmp_path, report), online=False).read_text()
    assert "first 20 documents" in text and "| Task | Metric | n-shot | Docs | Score |" in text
    assert "20 of 2,376" in text and "Retention" not in text
    data = ModelCard.load(Path(tmp_path / "out" / "README.md")).data
    assert all(r.dataset_args.get("limit") == 20 for r in data.eval_results if r.metric_type != "perplexity")


def test_report_without_json_is_a_clear_error(tmp_path):
    with pytest.raises(LayerPruneError, match="layerprune.json"):
        rerender(tmp_path)
    (tmp_path / "layerprune.json").write_text("{oops")
    with pytest.raises(LayerPruneError, match="not valid JSON"):
        rerender(tmp_path)


def test_report_is_not_mutated_by_rendering_except_base_card(tmp_path):
    report = realistic_report()
    out = write(tmp_path, report)
    before = read_report(out)
    rerender(out, online=False)
    assert read_report(out) == before  # no license found offline: nothing recorded


def test_sweep_section_and_pareto_plot(tmp_path):
    from hf_layerprune.evaluation import headline
    from hf_layerprune.card.plots import plot_pareto

    points = []
    for n, acc in [(28, 0.66), (24, 0.60), (20, 0.52)]:
        points.append({"output": f"m-pruned-{n}L", "num_layers_after": n, "removed_layers": list(range(n - 1, 31)),
                       "parameters": 210_000_000 * n, "parameters_before": 210_000_000 * 32,
                       **headline(realistic_report()), "mean_accuracy": acc})
    report = realistic_report(base_card={"license": "mit", "source": "t"}, removed_layers=list(range(23, 31)),
                              sweep={"points": points, "plot": "sweep_pareto.png"})
    out = write(tmp_path, report, "m-pruned-24L")
    assert plot_pareto(points, out / "sweep_pareto.png", current=out.name).stat().st_size > 1000
    text = rerender(out, online=False).read_text()
    section = text[text.index("## Depth sweep"):text.index("## How to use")]
    assert "| **this model** | 24 | 23–30 | 5.04B | 60.0 |" in section
    assert "](sweep_pareto.png)" in section
    # a plot name that is not a plain file name beside the card is not linked
    report["sweep"]["plot"] = "../../etc/passwd.png"
    write_report(out, report)
    assert "passwd" not in rerender(out, online=False).read_text()


def test_absorb_card_names_the_trained_layers_and_whether_the_fit_was_kept(tmp_path):
    report = realistic_report(base_card={"license": "mit", "source": "t"})
    report["healing"].update(method="absorb", reverted=False,
                             runs=[{"removed": [5], "layers": [3, 4]}, {"removed": [12, 13], "layers": [10, 11]}])
    text = rerender(write(tmp_path, report), online=False).read_text()
    assert "| Trained layers | 3, 4 (for removed 5); 10, 11 (for removed 12, 13) |" in text
    assert "| Kept | yes |" in text and "layer-absorption" in text and "{chen2024streamlining," in text
    report["healing"]["reverted"] = True
    text = rerender(write(tmp_path, report, name="undone"), online=False).read_text()
    assert "| Kept | no: undone, it raised the held-out loss |" in text


def test_distill_card_gives_loss_kl_and_intermediate_state_before_and_after(tmp_path):
    report = realistic_report(base_card={"license": "mit", "source": "t"})
    text = rerender(write(tmp_path, report), online=False).read_text()
    assert "| Loss before → after | 5.1000 → 1.9300 |" in text and "KL to the base model" not in text
    report["healing"].update(method="distill", kd_before=0.5778, kd_after=0.5048, hidden_before=0.0669, hidden_after=0.05)
    text = rerender(write(tmp_path, report, name="kd"), online=False).read_text()
    assert "| KL to the base model before → after | 0.5778 → 0.5048 |" in text
    assert "| Intermediate-state loss before → after | 0.0669 → 0.0500 |" in text


# ------------------------------------------------------------------------------------------- trust (issue 23)
OLD_REPORT = Path(__file__).parent / "data" / "old_layerprune.json"  # examples/ before issue 23: no per-doc scores


def machine_paths() -> list[str]:
    import site
    import tempfile

    prefixes = {tempfile.gettempdir(), str(Path.home()), "/tmp/", "/root/", "/home/", "site-packages"}
    prefixes |= set(site.getsitepackages())
    return sorted(p for p in prefixes if p)


def assert_no_machine_path(text: str, what: str) -> None:
    for prefix in machine_paths():
        assert prefix not in text, f"{prefix} in {what}"


def test_old_report_still_renders_with_its_claims_qualified(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "layerprune.json").write_text(OLD_REPORT.read_text())  # as it is on disk, absolute paths and all
    text = rerender(out, online=False).read_text()
    ModelCard.load(out / "README.md")
    assert_no_machine_path(text, "card of an old report")
    assert "`SmolLM2-135M-Instruct.Q4_1.gguf`" in text
    assert "were not checked against their chance or majority rates" in text  # no per-doc scores: no paired claims
    assert "**101.9%**" not in text  # the unchecked average is no bold headline any more
    assert "Prefill speed not reported" in text and "Decode speed not reported" in text  # ×2.76 and ×1.58 > ×1.25
    assert "Peak RSS" not in text  # 20 KiB -> 4 KiB
    assert "--include-path" not in text and "wiki.test.raw" in text


def _paired_evaluation():
    """evaluation_section of a base/pruned pair with per-doc scores: boolq below its majority rate."""
    from hf_layerprune.evaluation import EvalSettings, evaluation_section

    def model(hella, boolq):
        docs = {"local_hellaswag": {"doc_id": list(range(40)), "acc": hella, "acc_norm": hella,
                                    "target": [0, 1, 2, 3] * 10, "choices": [4] * 40},
                "local_boolq": {"doc_id": list(range(40)), "acc": boolq, "target": [1] * 28 + [0] * 12,
                                "choices": [2] * 40}}
        results = {t: {m: {"value": sum(v) / 40, "stderr": 0.05, "n_shot": 0, "limit": 40, "samples": 40,
                           "samples_total": 1000, "version": 1.0, "higher_is_better": True}
                       for m, v in d.items() if m.startswith("acc")} for t, d in docs.items()}
        return {"lm_eval": results, "lm_eval_samples": docs, "perplexity": None, "speed": None}

    base = model([1.0] * 30 + [0.0] * 10, [1.0] * 16 + [0.0] * 24)
    pruned = model([1.0] * 27 + [0.0] * 13, [1.0] * 26 + [0.0] * 14)
    return evaluation_section(EvalSettings(tasks=["local_hellaswag", "local_boolq"], limit=40, speed=False), base, pruned)


def test_card_headline_leaves_out_a_task_below_its_majority_rate(tmp_path):
    section = _paired_evaluation()
    assert section["paired"]["headline"]["tasks"] == ["local_hellaswag"]
    report = realistic_report(evaluation=section, base_card={"license": "llama2", "source": "test"})
    text = rerender(write(tmp_path, report), online=False).read_text()
    # 75.0 -> 67.5: 90.0 % kept; paired SE 4.2 points of accuracy = 5.6 points of retention (4.2 / 75.0)
    assert "it keeps **90.0% ± 5.6** of the base model's mean score (Δ −7.5 ± 4.2 pts, paired over the same " \
           "documents: no measurable change)" in text
    assert "local\\_boolq (base 40.0 ≤ majority 70.0)" in text  # said in the headline paragraph ...
    assert "| **excluded**: base 40.0 ≤ majority 70.0 |" in text  # ... and flagged in the table, which keeps it
    assert "| chance 50.0 / majority 70.0 |" in text and "+25.0 ± " in text
    assert "−7.5 ± 4.2 pts (no measurable change)" in text
    html = html_of(text)
    assert "<table>" in html and "excluded" in html


def test_no_machine_path_in_report_card_or_recipe_and_the_recipe_runs(tmp_path):
    from typer.testing import CliRunner

    from hf_layerprune.cli import app
    from tiny_models import tiny_model

    checkpoint = tmp_path / "models" / "tiny-llama"
    tiny_model("llama", num_layers=6).save_pretrained(checkpoint)
    (tmp_path / "runs").mkdir()
    out = tmp_path / "runs" / "cut"
    result = CliRunner().invoke(app, ["prune", str(checkpoint), "--drop", "2", "--metric", "last", "-o", str(out),
                                      "--heal", "none", "--no-eval"])
    assert result.exit_code == 0, result.output
    text = rerender(out, online=False).read_text()
    report_text = (out / "layerprune.json").read_text()
    for content, what in ((text, "card"), (report_text, "layerprune.json")):
        assert_no_machine_path(content, what)
        assert str(tmp_path) not in content
    report = json.loads(report_text)
    assert report["base_model"] == "./tiny-llama" and report["recipe"]["model"] == "tiny-llama"
    assert report["provenance"]["base_model"]["name"] == "tiny-llama"
    assert len(report["provenance"]["base_model"]["files"]["model.safetensors"]) == 64  # sha256
    assert "sha256" in text and "`tiny-llama`" in text
    # the card's recipe runs after replacing only the model path (and choosing where to write)
    recipe_text = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text.replace("model: tiny-llama", f"model: {checkpoint}"))
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["prune", str(checkpoint), "--recipe", str(recipe), "-o", str(again)])
    assert result.exit_code == 0, result.output
    assert json.loads((again / "layerprune.json").read_text())["removed_layers"] == report["removed_layers"]


@pytest.mark.parametrize("objective", ["last_word_nll", "kl_to_base"])
def test_autos_judged_candidates_are_a_table_best_first(tmp_path, objective):
    """The card shows what `auto` compared: each candidate's layers and the figures that decided, the winner first
    and marked; an older report judged by KL shows the KL column alone."""
    words = objective == "last_word_nll"
    candidates = [
        {"metrics": ["angular", "cosine"], "selected": [21, 22, 23, 24, 25, 26, 27, 28], "held_out_loss": 3.1,
         "held_out_kl": 0.41, **({"last_word_nll": 3.862, "last_word_accuracy": 0.27} if words else {})},
        {"metrics": ["bi"], "selected": [3, 21, 22, 23, 24, 25, 27, 28], "held_out_loss": 3.3, "held_out_kl": 0.98,
         **({"last_word_nll": 3.625, "last_word_accuracy": 0.304} if words else {})},
    ]
    judged = {"heal": "none" if words else "linear", "objective": objective, "held_out_samples": 8, "seq_len": 256,
              **({"long_range_text": "wiki.valid.tokens", "long_range_docs": 16} if words else {})}
    winner = candidates[1] if words else candidates[0]
    report = realistic_report(removed_layers=winner["selected"])
    report["scoring"].update(metric="auto", chosen_metric=winner["metrics"][0], candidates=candidates,
                             judged_with=judged, selected=winner["selected"])
    text = rerender(write(tmp_path, report)).read_text()
    ModelCard(text)  # the Hub's own parser accepts it
    table = text[text.index("<summary>Candidate cuts compared</summary>"):]
    table = table[: table.index("</details>")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Candidate" not in line]
    assert len(rows) == 2 and rows[0].startswith(f"| {', '.join(winner['metrics'])} |") and rows[0].endswith("| **chosen** |")
    if words:
        assert "16 held-out passages" in table and "unhealed" in table
        assert "| 3.625 | 30.4% | 0.980 |" in rows[0] and "| 3.862 | 27.0% | 0.410 |" in rows[1]
        assert "judged by how well the cut model still predicts the last words" in text
    else:
        assert "Last-word" not in table and "healed with `linear`" in table and "| 0.410 |" in rows[0]


def test_llama_cpp_speed_rows_are_marked_with_the_runtime(tmp_path):
    """The GGUF output's throughput in llama.cpp (llama_cpp_speed.py) sits beside the transformers rows, named
    as such, with its own speed-up and protocol sentence; a speed-up beyond what the removed layers explain is
    flagged instead, as for transformers; a report without it renders no llama.cpp row."""
    report = realistic_report()
    rec = lambda name, layers, pre, dec: {"file": name, "file_bytes": 98362432, "file_type": "3",  # noqa: E731
                                          "num_layers": layers, "prefill_tokens_per_s": pre, "decode_tokens_per_s": dec}
    report["evaluation"]["speed"]["llama_cpp"] = {
        "runtime": "llama.cpp (llama-cpp-python 0.3.36)",
        "base": rec("Llama-2-7b.Q4_1.gguf", 32, 306.44, 101.41),
        "pruned": rec("Llama-2-7b.Q4_1-pruned-24L.gguf", 24, 399.69, 152.1),
        "speedup": {"prefill": {"median": 1.319, "spread": 0.038}, "decode": {"median": 1.50, "spread": 0.02}},
        "protocol": {"warmup": 1, "repeats": 5, "threads": 2, "prompt_len": 128, "decode_tokens": 32},
    }
    text = rerender(write(tmp_path, report), online=False).read_text(encoding="utf-8")
    ModelCard(text)  # the Hub's own parser accepts it
    assert "| Prompt throughput in llama.cpp (tokens/s; 128-token prompt) | 306.4 | 399.7 | ×1.32 ± 0.04 |" in text
    assert "Generation throughput in llama.cpp" not in text  # ×1.50 for 32 -> 24 layers (at most ×1.33)
    assert "**Decode speed in llama.cpp not reported:** the measured speed-up (×1.50, spread 0.02) is larger than " \
           "the ×1.33 that the removed layers can explain (decoder layers 32 → 24)" in text
    assert "with llama.cpp (llama-cpp-python 0.3.36) on the CPU, 2 thread(s)" in text
    assert text.index("Decode throughput (tokens/s") < text.index("in llama.cpp (tokens/s")
    plain = rerender(write(tmp_path, realistic_report(), "plain"), online=False).read_text(encoding="utf-8")
    assert "llama.cpp" not in plain.split("### Speed and size")[1].split("\n## ")[0]


def test_the_compiled_card_template_is_reused_and_an_unwritable_cache_is_no_error(tmp_path, monkeypatch):
    """Compiling the template costs ~0.12 s of every run: it is kept in the cache folder (jinja's bytecode
    cache, keyed by the template's checksum) and the next process only loads it."""
    from jinja2 import Environment

    from hf_layerprune.card import render

    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))
    first = render._environment().get_template("model_card.md.j2")
    assert list((tmp_path / "cache" / "jinja").iterdir())
    monkeypatch.setattr(Environment, "compile", lambda *a, **k: pytest.fail("compiled again"))
    again = render._environment().get_template("model_card.md.j2")
    assert again.render is not None and first.name == again.name
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "file" / "below"))  # a file where a folder should be
    assert render._environment().get_template("model_card.md.j2") is not None
