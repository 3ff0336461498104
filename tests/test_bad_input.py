"""Every bad input to every command ends with one `Error:` line, exit code 2, and nothing written (issue 20).

One table: each case names a command line (placeholders are paths in a shared workspace of good and broken
models, recipes and outputs) and a phrase its error must contain. The workspace tree is compared before and after
each case, so a case that writes anything, or removes anything, fails.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import WRITE_TOKEN
from typer.testing import CliRunner

from hf_layerprune.cli import app
from tiny_models import save_word_tokenizer, tiny_model

runner = CliRunner()


def _safetensors_with_header(path: Path, header: bytes, length: int | None = None) -> None:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace: good and broken inputs, created once; cases must leave it exactly as it is."""
    root = tmp_path_factory.mktemp("bad-input")
    ckpt = root / "ckpt"
    tiny_model("llama", num_layers=4).save_pretrained(ckpt)
    save_word_tokenizer(ckpt)
    for name, damage in {
        "trunc": lambda p: p.write_bytes(p.read_bytes()[:-64]),
        "garbage": lambda p: _safetensors_with_header(p, b"\xff" * 16, length=2**63 + 5),  # OverflowError before
        "badjson": lambda p: _safetensors_with_header(p, b"{not json"),
        "extra": lambda p: p.write_bytes(p.read_bytes() + b"\0" * 10),
    }.items():
        shutil.copytree(ckpt, root / name)
        damage(root / name / "model.safetensors")
    pickle = root / "pickle"
    pickle.mkdir()
    (pickle / "config.json").write_text((ckpt / "config.json").read_text())
    (pickle / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    noconfig = root / "noconfig"
    noconfig.mkdir()
    shutil.copy(ckpt / "model.safetensors", noconfig)
    (root / "empty").mkdir()
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64)).save_pretrained(root / "gpt2")
    (root / "fake.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 32)
    (root / "notes.txt").write_text("not a model\n")
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work\n")
    previous = root / "previous"
    shutil.copytree(ckpt, previous)
    (previous / "layerprune.json").write_text(json.dumps({"format_version": 1, "base_model": "ckpt"}))
    # pruned-looking folders for upload
    pruned = root / "pruned"
    tiny_model("llama", num_layers=3).save_pretrained(pruned, max_shard_size="60KB")
    (pruned / "layerprune.json").write_text(json.dumps({"format_version": 1, "base_model": "acme/x",
                                                        "num_layers_before": 4, "num_layers_after": 3}))
    for name in ("pruned-trunc", "pruned-noshard", "pruned-badindex", "pruned-noreport", "pruned-badreport"):
        shutil.copytree(pruned, root / name)
    shard = root / "pruned-trunc" / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    (root / "pruned-noshard" / "model-00003-of-00003.safetensors").unlink()
    index = json.loads((pruned / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors"
    (root / "pruned-badindex" / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "pruned-noreport" / "layerprune.json").unlink()
    (root / "pruned-badreport" / "layerprune.json").write_text("{broken")
    recipes = {
        "drop-word": "drop: three\n", "seqlen-word": "drop: 1\nseq_len: abc\n", "eval-no": 'drop: 1\nevaluate: "no"\n',
        "unknown-key": "drop: 1\ncolour: blue\n", "list": "- drop\n- 1\n", "yaml": "drop: [1\n", "drop-str": 'drop: "4"\n',
        "heal-typo": "drop: 1\nheal: distill:adapter=ful\n", "layers-bad": "layers: x-y\n", "lr-str": "drop: 1\nlearning_rate: fast\n",
        "tasks-int": "drop: 1\ntasks: 5\n",
    }
    for name, text in recipes.items():
        (root / f"{name}.yaml").write_text(text)
    return root


C = "{ws}/ckpt"
OUT = "{ws}/out"
FAST = ["--heal", "none", "--no-eval"]

CASES: list[tuple[str, list[str], str]] = [
    # --- prune: the source ------------------------------------------------------------------------------------
    ("prune-missing-path", ["prune", "{ws}/nowhere/model", "--layers", "1", "-o", OUT, *FAST], "not found"),
    ("prune-text-file", ["prune", "{ws}/notes.txt", "--layers", "1", "-o", OUT, *FAST], "not a .gguf model"),
    ("prune-no-config", ["prune", "{ws}/noconfig", "--layers", "1", "-o", OUT, *FAST], "no config.json"),
    ("prune-empty-dir", ["prune", "{ws}/empty", "--layers", "1", "-o", OUT, *FAST], "no config.json"),
    ("prune-pickle-only", ["prune", "{ws}/pickle", "--layers", "1", "-o", OUT, *FAST], "--allow-pickle"),
    ("prune-truncated-layers", ["prune", "{ws}/trunc", "--layers", "1", "-o", OUT, *FAST], "truncated"),
    ("prune-truncated-drop", ["prune", "{ws}/trunc", "--drop", "1", "--metric", "bi", "-o", OUT, *FAST], "truncated"),
    ("prune-garbage-header", ["prune", "{ws}/garbage", "--layers", "1", "-o", OUT, *FAST], "not a valid safetensors"),
    ("prune-garbage-drop", ["prune", "{ws}/garbage", "--drop", "1", "-o", OUT, *FAST], "not a valid safetensors"),
    ("prune-bad-json-header", ["prune", "{ws}/badjson", "--layers", "1", "-o", OUT, *FAST], "not a valid safetensors"),
    ("prune-trailing-bytes", ["prune", "{ws}/extra", "--layers", "1", "-o", OUT, *FAST], "should end at byte"),
    ("prune-unknown-arch", ["prune", "{ws}/gpt2", "--layers", "1", "-o", OUT, *FAST], "gpt2"),
    ("prune-fake-gguf", ["prune", "{ws}/fake.gguf", "--layers", "1", "-o", OUT, *FAST], "not a valid GGUF"),
    # --- prune: what to remove --------------------------------------------------------------------------------
    ("prune-no-target", ["prune", C, "-o", OUT, *FAST], "--drop N or --layers"),
    ("prune-both-targets", ["prune", C, "--drop", "1", "--layers", "1", "-o", OUT, *FAST], "not both"),
    ("prune-drop-zero", ["prune", C, "--drop", "0", "-o", OUT, *FAST], "at least 1"),
    ("prune-drop-all", ["prune", C, "--drop", "4", "-o", OUT, *FAST], "smaller than the number of layers"),
    ("prune-drop-huge", ["prune", C, "--drop", "99", "-o", OUT, *FAST], "smaller than the number of layers"),
    ("prune-drop-word", ["prune", C, "--drop", "three", "-o", OUT, *FAST], "--drop"),
    ("prune-layer-out-of-range", ["prune", C, "--layers", "9", "-o", OUT, *FAST], "out of range"),
    ("prune-layer-repeated", ["prune", C, "--layers", "1,1", "-o", OUT, *FAST], "repeated"),
    ("prune-layer-words", ["prune", C, "--layers", "a-b", "-o", OUT, *FAST], "cannot read --layers"),
    ("prune-layer-negative", ["prune", C, "--layers", "-1", "-o", OUT, *FAST], "layers"),
    ("prune-all-layers", ["prune", C, "--layers", "0-3", "-o", OUT, *FAST], "layers"),
    ("prune-unknown-metric", ["prune", C, "--drop", "1", "--metric", "nope", "-o", OUT, *FAST], "unknown --metric"),
    ("prune-metric-option", ["prune", C, "--drop", "1", "--metric", "angular:foo=1", "-o", OUT, *FAST], "no option 'foo'"),
    ("prune-metric-syntax", ["prune", C, "--drop", "1", "--metric", "shapley:estimator", "-o", OUT, *FAST], "name:key=value"),
    ("prune-metric-granularity", ["prune", C, "--drop", "1", "--metric", "angular", "--granularity", "mlp", "-o", OUT, *FAST], "granularity"),
    ("prune-unknown-selection", ["prune", C, "--drop", "1", "--metric", "bi", "--selection", "best", "-o", OUT, *FAST], "--selection"),
    ("prune-unknown-granularity", ["prune", C, "--drop", "1", "--granularity", "head", "-o", OUT, *FAST], "--granularity"),
    ("prune-bad-protect", ["prune", C, "--drop", "1", "--metric", "bi", "--protect", "middle", "-o", OUT, *FAST], "--protect"),
    ("prune-samples-zero", ["prune", C, "--drop", "1", "--calibration-samples", "0", "-o", OUT, *FAST], "at least 1"),
    ("prune-seqlen-zero", ["prune", C, "--drop", "1", "--seq-len", "0", "-o", OUT, *FAST], "at least 1"),
    ("prune-seqlen-word", ["prune", C, "--drop", "1", "--seq-len", "abc", "-o", OUT, *FAST], "--seq-len"),
    ("prune-calibration-is-held-out", ["prune", C, "--drop", "1", "--heal", "none", "--calibration", "{ws}/notes.txt",
                                       "--perplexity", "{ws}/notes.txt", "-o", OUT], "held-out text"),
    ("prune-rounds-zero", ["prune", C, "--drop", "1", "--rounds", "0", "-o", OUT, *FAST], "at least 1"),
    # --- prune: healing and evaluation options ----------------------------------------------------------------
    # --- prune --load-in-4bit: what does not work on 4-bit weights is refused before loading --------------------
    ("4bit-absorb", ["prune", C, "--drop", "1", "--metric", "bi", "--load-in-4bit", "--heal", "absorb", "--no-eval", "-o", OUT], "heals with qlora"),
    ("4bit-chain", ["prune", C, "--drop", "1", "--metric", "bi", "--load-in-4bit", "--heal", "qlora+linear", "--no-eval", "-o", OUT], "--heal linear"),
    ("4bit-auto", ["prune", C, "--drop", "1", "--metric", "auto", "--load-in-4bit", "--no-eval", "-o", OUT], "name a metric"),
    ("4bit-sublayer", ["prune", C, "--drop", "1", "--granularity", "mlp", "--load-in-4bit", "--no-eval", "-o", OUT], "DeciLM"),
    ("4bit-rounds", ["prune", C, "--drop", "2", "--rounds", "2", "--load-in-4bit", "--no-eval", "-o", OUT], "one round"),
    ("4bit-offload", ["prune", C, "--drop", "1", "--offload", "--load-in-4bit", "--no-eval", "-o", OUT], "give one"),
    ("4bit-gguf-out", ["prune", C, "--drop", "1", "--load-in-4bit", "--format", "gguf", "--no-eval", "-o", OUT], "writes safetensors"),
    ("4bit-pickle", ["prune", "{ws}/pickle", "--drop", "1", "--load-in-4bit", "--allow-pickle", "--no-eval", "-o", OUT], "safetensors shards"),
    ("prune-unknown-healer", ["prune", C, "--layers", "1", "--heal", "magic", "--no-eval", "-o", OUT], "magic"),
    ("prune-healer-option-typo", ["prune", C, "--layers", "1", "--heal", "distill:adapter=ful", "--no-eval", "-o", OUT], "ful"),
    ("prune-healer-chain-typo", ["prune", C, "--layers", "1", "--heal", "linear+nope", "--no-eval", "-o", OUT], "nope"),
    ("prune-negative-lr", ["prune", C, "--layers", "1", "--learning-rate", "-1", "--no-eval", "-o", OUT], "positive"),
    ("prune-heal-steps-zero", ["prune", C, "--layers", "1", "--heal-steps", "0", "--no-eval", "-o", OUT], "at least 1"),
    ("prune-lora-rank-zero", ["prune", C, "--layers", "1", "--heal", "lora", "--lora-rank", "0", "--no-eval", "-o", OUT], "at least 1"),
    ("prune-unknown-task", ["prune", C, "--layers", "1", "--heal", "none", "--tasks", "no_such_task_xyz", "-o", OUT], "no_such_task_xyz"),
    ("prune-limit-zero", ["prune", C, "--layers", "1", "--heal", "none", "--limit", "0", "-o", OUT], "at least 1"),
    ("prune-batch-zero", ["prune", C, "--layers", "1", "--batch-size", "0", "-o", OUT, *FAST], "at least 1"),
    ("prune-fewshot-negative", ["prune", C, "--layers", "1", "--heal", "none", "--num-fewshot", "-2", "-o", OUT], "negative"),
    # --- prune: runtime ----------------------------------------------------------------------------------------
    ("prune-unknown-dtype", ["prune", C, "--layers", "1", "--dtype", "float8", "-o", OUT, *FAST], "dtype"),
    ("prune-unknown-device", ["prune", C, "--layers", "1", "--device", "foo", "-o", OUT, *FAST], "--device"),
    ("prune-device-no-cuda", ["prune", C, "--drop", "1", "--device", "cuda:7", "-o", OUT, *FAST], "CUDA"),
    ("prune-shard-size", ["prune", C, "--layers", "1", "--max-shard-size", "huge", "-o", OUT, *FAST], "--max-shard-size"),
    # --- prune: the output --------------------------------------------------------------------------------------
    ("prune-no-output", ["prune", C, "--layers", "1", *FAST], "--output-dir"),
    ("prune-output-exists", ["prune", C, "--layers", "1", "-o", "{ws}/previous", *FAST], "--overwrite"),
    ("prune-output-foreign", ["prune", C, "--layers", "1", "-o", "{ws}/foreign", "--overwrite", *FAST], "not an hf-layerprune output"),
    ("prune-output-is-source", ["prune", C, "--layers", "1", "-o", C, "--overwrite", *FAST], "source model itself"),
    ("prune-output-in-source", ["prune", C, "--layers", "1", "-o", C + "/sub", *FAST], "inside the source"),
    ("prune-output-holds-source", ["prune", "{ws}/previous", "--layers", "1", "-o", "{ws}", "--overwrite", *FAST], "contains the source"),
    ("prune-output-under-file", ["prune", C, "--layers", "1", "-o", "{ws}/notes.txt/out", *FAST], "is a file"),
    ("prune-output-is-file", ["prune", C, "--layers", "1", "-o", "{ws}/notes.txt", "--overwrite", *FAST], "not a directory"),
    ("prune-output-no-parent", ["prune", C, "--layers", "1", "-o", "{ws}/a/b/c", *FAST], "does not exist"),
    ("prune-output-read-only", ["prune", C, "--layers", "1", "-o", "/sys/layerprune-out", *FAST], "cannot write"),
    # --- prune: recipes ----------------------------------------------------------------------------------------
    ("recipe-drop-word", ["prune", C, "--recipe", "{ws}/drop-word.yaml", "-o", OUT, *FAST], "drop: 'three' is not an integer"),
    ("recipe-drop-string", ["prune", C, "--recipe", "{ws}/drop-str.yaml", "-o", OUT, *FAST], "drop: '4' is not an integer"),
    ("recipe-seqlen-word", ["prune", C, "--recipe", "{ws}/seqlen-word.yaml", "-o", OUT, *FAST], "seq_len: 'abc'"),
    ("recipe-evaluate-no", ["prune", C, "--recipe", "{ws}/eval-no.yaml", "-o", OUT, "--heal", "none"], "evaluate: 'no' is not true or false"),
    ("recipe-unknown-key", ["prune", C, "--recipe", "{ws}/unknown-key.yaml", "-o", OUT, *FAST], "colour"),
    ("recipe-not-mapping", ["prune", C, "--recipe", "{ws}/list.yaml", "-o", OUT, *FAST], "mapping"),
    ("recipe-bad-yaml", ["prune", C, "--recipe", "{ws}/yaml.yaml", "-o", OUT, *FAST], "not valid YAML"),
    ("recipe-missing", ["prune", C, "--recipe", "{ws}/nope.yaml", "-o", OUT, *FAST], "not found"),
    ("recipe-heal-typo", ["prune", C, "--recipe", "{ws}/heal-typo.yaml", "-o", OUT, "--no-eval"], "ful"),
    ("recipe-bad-layers", ["prune", C, "--recipe", "{ws}/layers-bad.yaml", "-o", OUT, *FAST], "cannot read --layers"),
    ("recipe-lr-word", ["prune", C, "--recipe", "{ws}/lr-str.yaml", "-o", OUT, *FAST], "learning_rate"),
    ("recipe-tasks-int", ["prune", C, "--recipe", "{ws}/tasks-int.yaml", "-o", OUT, "--heal", "none"], "tasks"),
    # --- analyze -----------------------------------------------------------------------------------------------
    ("analyze-missing", ["analyze", "{ws}/nowhere/model"], "not found"),
    ("analyze-truncated", ["analyze", "{ws}/trunc", "--metric", "bi"], "truncated"),
    ("analyze-garbage", ["analyze", "{ws}/garbage", "--metric", "bi"], "not a valid safetensors"),
    ("analyze-unknown-metric", ["analyze", C, "--metric", "nope"], "nope"),
    ("analyze-json-dir", ["analyze", C, "--metric", "bi", "--json", "{ws}/empty"], "is a directory"),
    ("analyze-json-under-file", ["analyze", C, "--metric", "bi", "--json", "{ws}/notes.txt/s.json"], "is a file"),
    ("analyze-plot-dir", ["analyze", C, "--metric", "bi", "--plot", "{ws}/empty"], "is a directory"),
    ("analyze-device", ["analyze", C, "--metric", "bi", "--device", "foo"], "--device"),
    ("analyze-granularity", ["analyze", C, "--granularity", "head"], "--granularity"),
    ("analyze-batch-zero", ["analyze", C, "--metric", "bi", "--batch-size", "0"], "at least 1"),
    ("analyze-pickle", ["analyze", "{ws}/pickle", "--metric", "bi"], "--allow-pickle"),
    # --- evaluate ----------------------------------------------------------------------------------------------
    ("evaluate-missing", ["evaluate", "{ws}/nowhere/model", "--no-base", "--tasks", "none", "--perplexity", "none"], "not found"),
    ("evaluate-truncated", ["evaluate", "{ws}/trunc", "--no-base", "--tasks", "none", "--perplexity", "none"], "truncated"),
    ("evaluate-garbage", ["evaluate", "{ws}/garbage", "--no-base", "--tasks", "none"], "not a valid safetensors"),
    ("evaluate-json-dir", ["evaluate", C, "--no-base", "--json", "{ws}/empty"], "is a directory"),
    ("evaluate-device", ["evaluate", C, "--no-base", "--device", "foo"], "--device"),
    ("evaluate-dtype", ["evaluate", C, "--no-base", "--dtype", "int3"], "dtype"),
    ("evaluate-limit-word", ["evaluate", C, "--no-base", "--limit", "many"], "--limit"),
    ("evaluate-base-and-no-base", ["evaluate", C, "--base", C, "--no-base"], "not both"),
    ("evaluate-unknown-task", ["evaluate", C, "--no-base", "--tasks", "no_such_task_xyz"], "no_such_task_xyz"),
    ("evaluate-batch-zero", ["evaluate", C, "--no-base", "--batch-size", "0"], "at least 1"),
    # --- card --------------------------------------------------------------------------------------------------
    ("card-missing-dir", ["card", "{ws}/nowhere"], "nowhere"),
    ("card-no-report", ["card", C], "layerprune.json"),
    ("card-bad-report", ["card", "{ws}/pruned-badreport"], "layerprune.json"),
    ("card-missing-base-card", ["card", "{ws}/pruned", "--base-card", "{ws}/nope.md", "--no-plots"], "nope.md"),
    # --- upload ------------------------------------------------------------------------------------------------
    ("upload-not-dir", ["upload", "{ws}/notes.txt", "--repo-id", "acme/x"], "not a directory"),
    ("upload-no-report", ["upload", "{ws}/pruned-noreport", "--repo-id", "acme/x"], "layerprune.json"),
    ("upload-bad-report", ["upload", "{ws}/pruned-badreport", "--repo-id", "acme/x"], "layerprune.json"),
    ("upload-truncated-shard", ["upload", "{ws}/pruned-trunc", "--repo-id", "acme/x"], "truncated"),
    ("upload-missing-shard", ["upload", "{ws}/pruned-noshard", "--repo-id", "acme/x"], "model-00003-of-00003"),
    ("upload-index-disagrees", ["upload", "{ws}/pruned-badindex", "--repo-id", "acme/x"], "disagree"),
    ("upload-bad-repo-id", ["upload", "{ws}/pruned", "--repo-id", "a/b/c"], "invalid --repo-id"),
    ("upload-not-a-model", ["upload", "{ws}/foreign", "--repo-id", "acme/x"], "not a pruned model folder"),
    # --- push --------------------------------------------------------------------------------------------------
    ("push-missing-model", ["push", "{ws}/nowhere/model", "--layers", "1", *FAST, "--repo-id", "acme/x"], "not found"),
    ("push-bad-repo-id", ["push", C, "--layers", "1", *FAST, "--repo-id", "a/b/c"], "invalid --repo-id"),
    ("push-drop-zero", ["push", C, "--drop", "0", *FAST, "--repo-id", "acme/x"], "at least 1"),
    ("push-healer-typo", ["push", C, "--layers", "1", "--heal", "distill:adapter=ful", "--no-eval", "--repo-id", "acme/x"], "ful"),
    ("push-recipe-type", ["push", C, "--recipe", "{ws}/drop-word.yaml", *FAST, "--repo-id", "acme/x"], "not an integer"),
    ("push-output-foreign", ["push", C, "--layers", "1", *FAST, "--repo-id", "acme/x", "-o", "{ws}/foreign", "--overwrite"], "not an hf-layerprune output"),
    ("push-truncated", ["push", "{ws}/trunc", "--layers", "1", *FAST, "--repo-id", "acme/x"], "truncated"),
    # --- sweep -------------------------------------------------------------------------------------------------
    ("sweep-drop-words", ["sweep", C, "--drop", "a,b", "-o", OUT, *FAST], "--drop"),
    ("sweep-drop-repeated", ["sweep", C, "--drop", "1,1", "-o", OUT, *FAST], "distinct"),
    ("sweep-drop-all", ["sweep", C, "--drop", "1,4", "-o", OUT, *FAST], "smaller than the number of layers"),
    ("sweep-output-under-file", ["sweep", C, "--drop", "1,2", "-o", "{ws}/notes.txt/out", *FAST], "is a file"),
    ("sweep-output-is-file", ["sweep", C, "--drop", "1,2", "-o", "{ws}/notes.txt", *FAST], "not a directory"),
    ("sweep-output-in-source", ["sweep", C, "--drop", "1,2", "-o", C + "/variants", *FAST], "inside the source"),
    ("sweep-unknown-metric", ["sweep", C, "--drop", "1,2", "--metric", "nope", "-o", OUT, *FAST], "nope"),
    ("sweep-granularity", ["sweep", C, "--drop", "1,2", "--granularity", "mlp", "-o", OUT, *FAST], "whole layers"),
    ("sweep-truncated", ["sweep", "{ws}/trunc", "--drop", "1,2", "-o", OUT, *FAST], "truncated"),
    ("sweep-bad-prefix", ["sweep", C, "--drop", "1,2", "-o", OUT, *FAST, "--repo-prefix", "a/b/c"], "invalid --repo-id"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name, argv, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(ws, hub_server, name, argv, phrase):
    args = [a.replace("{ws}", str(ws)) for a in argv]
    if args[0] in ("upload", "push") or "--repo-prefix" in args:
        args += ["--token", WRITE_TOKEN]
    before = snapshot(ws)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, f"{name}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"{name}: {lines[-5:]}"
    assert "Traceback" not in result.output
    assert phrase.lower() in errors[0].lower(), f"{name}: {errors[0]}"
    assert snapshot(ws) == before, f"{name} changed the workspace"
    assert not [r for r in hub_server.requests if r["method"] in ("POST", "PUT", "DELETE")], f"{name} wrote to the Hub"


def test_the_table_covers_every_command():
    commands = {argv[0] for _, argv, _ in CASES}
    assert commands == {"prune", "analyze", "evaluate", "card", "upload", "push", "sweep"}
    assert len(CASES) >= 70
