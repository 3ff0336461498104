"""Issue 25: the run as a person (or a CI log, or a dashboard) sees it, and help at the first step."""

from __future__ import annotations

import io
import json
import re

import pytest
from conftest import WRITE_TOKEN
from huggingface_hub import HfApi
from test_evaluation import DATA, TEXT, TINY_TASK
from typer.testing import CliRunner

from hf_layerprune.runtime import progress
from hf_layerprune.cli import app
from hf_layerprune.flow.pipeline import run
from hf_layerprune.recipe import Recipe
from tiny_models import save_word_tokenizer, tiny_model

runner = CliRunner()
LEAKS = ("{'loss'", "%|", "it/s]", "/it]", "FutureWarning", "INFO ")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "src"
    tiny_model("llama", num_layers=4).save_pretrained(path)
    save_word_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    (d / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    (d / "tiny.raw").write_text(TEXT, encoding="utf-8")
    return d


def test_plain_log_covers_every_stage_without_third_party_noise(source, tasks, tmp_path):
    events = tmp_path / "events.jsonl"
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "prune", str(source), "--drop", "1", "--metric", "bi", "--calibration-samples", "4", "--seq-len", "16",
        "--heal", "lora", "--heal-steps", "3", "--tasks", "tiny_mc", "--include-path", str(tasks), "--limit", "4",
        "--perplexity", str(tasks / "tiny.raw"), "--batch-size", "4", "-o", str(out), "--log-json", str(events)])
    assert result.exit_code == 0, result.output
    text = result.stderr
    assert "\r" not in text, repr(text[max(0, text.find("\r") - 300):text.find("\r") + 80])
    assert not any(leak in text for leak in LEAKS), text
    stamped = [line for line in text.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] ", line)]
    assert any("training: 3/3 steps (100%)" in line for line in stamped)
    assert "hf-layerprune summary" in text and "hf-layerprune upload" in text
    log = [json.loads(line) for line in events.read_text().splitlines()]
    started = {e["stage"] for e in log if e["event"] == "stage_start"}
    assert {"load", "calibrate", "score", "cut", "heal", "evaluate", "save", "card"} <= started
    ended = {e["stage"] for e in log if e["event"] == "stage_end"}
    assert started == ended and all(e["seconds"] >= 0 for e in log if e["event"] == "stage_end")
    training = [e for e in log if e["event"] == "progress" and e["task"] == "training"]
    assert training[-1]["completed"] == 3 and training[-1]["finished"] and "loss" in training[-1]
    summary = next(e for e in log if e["event"] == "summary")
    assert summary["layers"] == "4 → 3" and summary["output"] == str(out)
    assert summary["next"] == f"hf-layerprune upload {out}"


def test_live_terminal_shows_stages_bars_and_the_summary(source, tmp_path):
    stream = io.StringIO()
    recipe = Recipe(model=str(source), layers=[1], heal="lora", heal_steps=6, calibration_samples=4, seq_len=16,
                    evaluate=False, output_dir=str(tmp_path / "out"))
    with progress.Display("live", stream=stream, width=110) as display:
        report = run(recipe, log=display.message).to_dict()
        from hf_layerprune.cli.options import show_summary

        show_summary(display, report, recipe.output_dir, None)
    screen = stream.getvalue()
    for stage in ("load", "cut", "heal", "save", "card"):
        assert stage in screen
    assert "✓" in screen and "training" in screen and "6/6 steps" in screen
    assert "hf-layerprune summary" in screen and "4 → 3" in screen


def test_plain_bars_are_rate_limited():
    stream = io.StringIO()
    with progress.Display("plain", stream=stream, interval=3600) as display:
        with progress.stage("score"):
            bar = progress.task("capturing", total=10000, unit="batches")
            for _ in range(10000):
                bar.advance(1)
            bar.done()
        display.message("a long message " * 20)
    lines = stream.getvalue().splitlines()
    assert sum("capturing" in line for line in lines) == 1  # only the final line within the interval
    assert all(len(line) <= 120 for line in lines)  # messages are folded at word boundaries, never mid-word
    assert "\r" not in stream.getvalue()


def test_library_calls_without_a_display_are_silent(capsys):
    with progress.stage("score"):
        progress.task("x", 3).advance(3)
    assert capsys.readouterr().err == ""


def test_quiet_shows_only_the_final_line(source, tmp_path):
    result = runner.invoke(app, ["prune", str(source), "--layers", "1", "--heal", "none", "--no-eval", "--quiet",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [f"Saved {tmp_path / 'out'}: 4 -> 3 layers, removed [1]"]


# --- help at the first step -------------------------------------------------------------------------------------


def test_meta_original_format_folder_names_the_hf_checkpoint(tmp_path):
    folder = tmp_path / "Llama-2-7b"
    folder.mkdir()
    (folder / "params.json").write_text('{"dim": 4096, "n_layers": 32}')
    (folder / "consolidated.00.pth").write_bytes(b"\x80\x02")
    result = runner.invoke(app, ["prune", str(folder), "--drop", "8", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Meta's original format" in result.stderr and "-hf" in result.stderr


def _upload(api: HfApi, repo: str, files: dict[str, bytes]) -> None:
    from huggingface_hub import CommitOperationAdd

    api.create_repo(repo)
    api.create_commit(repo, [CommitOperationAdd(p, data) for p, data in files.items()], commit_message="add")


def test_hub_first_step_messages(hub_server, source, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    api = HfApi(token=WRITE_TOKEN)
    _upload(api, "acme/Llama-9b", {"params.json": b"{}", "consolidated.00.pth": b"\x80\x02"})
    _upload(api, "acme/Llama-9b-hf", {"config.json": (source / "config.json").read_bytes()})
    _upload(api, "acme/gated-model", {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()})
    hub_server.gate("acme/gated-model")
    hub_server.add_token("hf_OtherUser0123456789", "bob")

    def error(model, token=WRITE_TOKEN):
        monkeypatch.setenv("HF_TOKEN", token)
        result = runner.invoke(app, ["prune", model, "--layers", "1", "--heal", "none", "--no-eval",
                                     "-o", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        return result.stderr.strip().splitlines()[-1]

    assert "use acme/Llama-9b-hf, its transformers checkpoint" in error("acme/Llama-9b")
    gated = error("acme/gated-model", "hf_OtherUser0123456789")
    assert "is gated" in gated and "accept its licence" in gated and "hf auth login" in gated
    assert f"{hub_server.url}/acme/gated-model" in gated
    assert "the owner 'acme' exists: check the model name" in error("acme/no-such-model")
    assert "no user or organization named 'acmee' exists" in error("acmee/gated-model")
    assert not (tmp_path / "out").exists()
