"""Every bad input to every command ends with one `Error:` line, exit code 2, and nothing written (issue 20).

One table: each case names a command line (placeholders are paths in a shared workspace of good and broken
models, recipes and outputs) and a phrase its error must contain. The workspace tree is compared before and after
each case, so a case that writes anything, or removes anything, fails.

Issue 32 added the sections "32.1" to "32.8" of CASES (each failed on db17af2: a traceback, a wrong acceptance, a
hang or a write outside the output) and the tests after the table, whose expected outcomes are:

| case | expected outcome |
|---|---|
| CASES (every row) | exit 2, one `Error:` line holding the row's phrase, workspace and local Hub unchanged |
| `--log-json` refused before the first stage / failing after it | no file at all / the log renamed into place |
| a side-file link inside the source folder | accepted: the output holds a copy of the file, not a link |
| recipe `layers: 1` | accepted, as `--layers 1` |
| `analyze --json --plot` | both written through a temporary sibling, none left behind |
| `--token` with a newline or spaces, wrong | exit 2, no form of the token (raw, stripped, repr) in the output |
| `WORLD_SIZE=abc`, `WORLD_SIZE=2` without a launcher, `RANK=7` of 2 | exit 2 at once (no wait), nothing written |
| a source `auto_map` (local module, another repo's code) | accepted; the output's config has no `auto_map`, no `.py` |
| stale push work folder (owner process gone) | removed by the next push; a live, foreign-host or kept one stays |
| a temporary side file of a killed run (`.NAME.tmp-HOST-PID-*`) | removed by the next write of NAME on this host |
| `layerprune-staging-*` branches older than 6 h / legacy names | deleted by the next publish; a live one stays |
| publish failing after creating the repo (`refs/pr/999`) or before (`bad..name`) | no repo left on the Hub |
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
        "int-key": "drop: 1\n1: 2\n", "lr-inf": "drop: 1\nlearning_rate: .inf\n",
        "samples-huge": "drop: 1\ncalibration_samples: 1000000000000\n", "deep": "drop: " + "[" * 5000 + "]" * 5000 + "\n",
    }
    for name, text in recipes.items():
        (root / f"{name}.yaml").write_text(text)
    (root / "latin1.yaml").write_bytes("drop: 1\n# r\xe9glage\n".encode("latin-1"))
    _add_issue32_inputs(root, ckpt)
    return root


def _with_config(root: Path, ckpt: Path, name: str, **changes) -> None:
    shutil.copytree(ckpt, root / name)
    config = json.loads((ckpt / "config.json").read_text())
    (root / name / "config.json").write_text(json.dumps({**config, **changes}))


def _rewrite_header(path: Path, change) -> None:
    """Rewrite a safetensors header in place (the data bytes stay where their offsets say)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    text = change(header)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])


def _negative_dims(header: dict) -> bytes:
    name = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)
    header[name]["shape"] = [-d for d in header[name]["shape"]]
    return json.dumps(header).encode()


def _deep_metadata(header: dict) -> bytes:
    text = json.dumps(header).encode()
    return text[:-1] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _gguf(path: Path, block_count, blocks: int = 6) -> None:
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter

    writer = GGUFWriter(path, "llama")
    if isinstance(block_count, int):
        writer.add_block_count(block_count)
    elif isinstance(block_count, str):
        writer.add_string("llama.block_count", block_count)
    else:
        writer.add_key_value("llama.block_count", block_count, GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT32)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    for i in range(blocks):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.full(4, i, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_issue32_inputs(root: Path, ckpt: Path) -> None:
    """Issue 32: links, FIFOs, inconsistent checkpoints, absurd sizes."""
    import os

    (root / "victim.txt").write_text("someone else's file\n")
    (root / "log-link.json").symlink_to(root / "victim.txt")
    (root / "dir-link").symlink_to(root / "empty")
    os.mkfifo(root / "fifo")
    _with_config(root, ckpt, "more-layers", num_hidden_layers=6)  # config 6 over weights of 4
    _with_config(root, ckpt, "fewer-layers", num_hidden_layers=3)  # config 3 over weights of 4
    _with_config(root, ckpt, "word-layers", num_hidden_layers="six")
    _with_config(root, ckpt, "huge-layers", num_hidden_layers=10**12)
    shutil.copytree(ckpt, root / "deep-config")
    text = (ckpt / "config.json").read_text().rstrip().rstrip("}")
    (root / "deep-config" / "config.json").write_text(text + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for name, change in {"negative-dims": _negative_dims, "deep-header": _deep_metadata}.items():
        shutil.copytree(ckpt, root / name)
        _rewrite_header(root / name / "model.safetensors", change)
    shutil.copytree(ckpt, root / "linked")
    (root / "linked" / "notes.txt").symlink_to(root / "victim.txt")  # a side file that leads out of the folder
    shutil.copytree(root / "pruned", root / "pruned-linked")
    (root / "pruned-linked" / "notes.txt").symlink_to(root / "victim.txt")
    for name, content in {"report-empty": b"", "report-latin1": b"{\"base_model\": \"caf\xe9\"}", "report-list": b"[1, 2]",
                          "report-mistyped": json.dumps({"format_version": 1, "base_model": "acme/x", "scoring": "bi"}).encode(),
                          "report-layers": json.dumps({"format_version": 1, "base_model": "acme/x", "removed_layers": "1,2"}).encode(),
                          "report-deep": b'{"scoring": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}.items():
        shutil.copytree(root / "pruned", root / name)
        (root / name / "layerprune.json").write_bytes(content)
    (root / "card-latin1.md").write_bytes("---\nlicense: mit\n---\n# Caf\xe9\n".encode("latin-1"))
    (root / "ppl-latin1.txt").write_bytes("Un caf\xe9 tr\xe8s fort.\n".encode("latin-1"))
    _gguf(root / "gguf-ok.gguf", 6)  # consistent, but not a model transformers can build
    _gguf(root / "gguf-more.gguf", 10)  # block_count 10 over 6 blocks
    _gguf(root / "gguf-fewer.gguf", 4)
    _gguf(root / "gguf-string.gguf", "6")
    _gguf(root / "gguf-array.gguf", [6, 6])


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
    ("prune-both-targets", ["prune", C, "--drop", "1", "--layers", "1", "-o", OUT, *FAST], "not several"),
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
    # --- issue 32.1: every output path goes through one check ---------------------------------------------------
    ("log-json-source-config", ["prune", C, "--layers", "1", "-o", OUT, *FAST, "--log-json", C + "/config.json"], "inside the source"),
    ("log-json-source-weights", ["prune", C, "--layers", "1", "-o", OUT, *FAST, "--log-json", C + "/model.safetensors"], "inside the source"),
    ("log-json-other-model", ["prune", C, "--layers", "1", "-o", OUT, *FAST, "--log-json", "{ws}/pruned/log.jsonl"], "model folder"),
    ("log-json-symlink", ["prune", C, "--layers", "1", "-o", OUT, *FAST, "--log-json", "{ws}/log-link.json"], "symbolic link"),
    ("log-json-fifo", ["prune", C, "--layers", "1", "-o", OUT, *FAST, "--log-json", "{ws}/fifo"], "FIFO"),
    ("log-json-device", ["prune", C, "--layers", "1", "-o", OUT, *FAST, "--log-json", "/dev/full"], "device"),
    ("log-json-weight-name", ["prune", C, "--layers", "1", "-o", OUT, *FAST, "--log-json", "{ws}/log.safetensors"], "model file"),
    ("log-json-in-output", ["prune", C, "--layers", "1", "-o", "{ws}/previous", "--overwrite", *FAST, "--log-json", "{ws}/previous/log.jsonl"], "inside the run's output"),
    ("log-json-bad-option", ["prune", C, "--drop", "0", "-o", OUT, *FAST, "--log-json", "{ws}/log.jsonl"], "at least 1"),
    ("log-json-bad-layer", ["prune", C, "--layers", "9", "-o", OUT, *FAST, "--log-json", "{ws}/log.jsonl"], "out of range"),
    ("push-log-json-source", ["push", C, "--layers", "1", *FAST, "--repo-id", "acme/x", "--log-json", C + "/config.json"], "inside the source"),
    ("sweep-log-json-source", ["sweep", C, "--drop", "1,2", "-o", OUT, *FAST, "--log-json", C + "/tokenizer.json"], "inside the source"),
    ("sweep-log-json-bad-option", ["sweep", C, "--drop", "1,9", "-o", OUT, *FAST, "--log-json", "{ws}/log.jsonl"], "smaller than"),
    ("prune-output-symlink", ["prune", C, "--layers", "1", "-o", "{ws}/dir-link", "--overwrite", *FAST], "symbolic link"),
    ("prune-output-in-model", ["prune", C, "--layers", "1", "-o", "{ws}/pruned/sub", *FAST], "model folder"),
    ("sweep-output-symlink", ["sweep", C, "--drop", "1,2", "-o", "{ws}/dir-link", *FAST], "symbolic link"),
    ("sweep-drop-negative", ["sweep", C, "--drop", "-1,2", "-o", OUT, *FAST], "at least 1"),
    ("analyze-json-source-config", ["analyze", C, "--metric", "bi", "--json", C + "/config.json"], "inside the source"),
    ("analyze-json-other-model", ["analyze", C, "--metric", "bi", "--json", "{ws}/pruned/s.json"], "model folder"),
    ("analyze-json-symlink", ["analyze", C, "--metric", "bi", "--json", "{ws}/log-link.json"], "symbolic link"),
    ("analyze-json-fifo", ["analyze", C, "--metric", "bi", "--json", "{ws}/fifo"], "FIFO"),
    ("analyze-plot-device", ["analyze", C, "--metric", "bi", "--plot", "/dev/full"], "device"),
    ("analyze-plot-format", ["analyze", C, "--metric", "bi", "--plot", "{ws}/scores.xyz"], ".png"),
    ("analyze-json-is-plot", ["analyze", C, "--metric", "bi", "--json", "{ws}/s.png", "--plot", "{ws}/s.png"], "two files"),
    ("evaluate-json-source", ["evaluate", C, "--no-base", "--json", C + "/config.json"], "inside the source"),
    ("evaluate-json-symlink", ["evaluate", C, "--no-base", "--json", "{ws}/log-link.json"], "symbolic link"),
    # --- issue 32.2: the checkpoint is what its config says, before any cut -------------------------------------
    ("ckpt-more-layers-stream", ["prune", "{ws}/more-layers", "--layers", "1", "-o", OUT, *FAST], "disagree"),
    ("ckpt-more-layers-memory", ["prune", "{ws}/more-layers", "--drop", "1", "--metric", "bi", "-o", OUT, *FAST], "disagree"),
    ("ckpt-fewer-layers", ["prune", "{ws}/fewer-layers", "--layers", "1", "-o", OUT, *FAST], "disagree"),
    ("ckpt-fewer-layers-analyze", ["analyze", "{ws}/fewer-layers", "--metric", "bi"], "disagree"),
    ("ckpt-more-layers-evaluate", ["evaluate", "{ws}/more-layers", "--no-base", "--tasks", "none", "--perplexity", "none"], "disagree"),
    ("ckpt-more-layers-sweep", ["sweep", "{ws}/more-layers", "--drop", "1,2", "-o", OUT, *FAST], "disagree"),
    ("ckpt-word-layers", ["prune", "{ws}/word-layers", "--layers", "1", "-o", OUT, *FAST], "not a positive integer"),
    ("ckpt-huge-layers", ["prune", "{ws}/huge-layers", "--layers", "1", "-o", OUT, *FAST], "more than the 100000"),
    ("ckpt-huge-layers-memory", ["prune", "{ws}/huge-layers", "--drop", "1", "--metric", "bi", "-o", OUT, *FAST], "more than the 100000"),
    ("ckpt-negative-dims", ["prune", "{ws}/negative-dims", "--layers", "1", "-o", OUT, *FAST], "non-negative integer"),
    ("ckpt-deep-config", ["prune", "{ws}/deep-config", "--layers", "1", "-o", OUT, *FAST], "nested too deeply"),
    ("ckpt-deep-header", ["prune", "{ws}/deep-header", "--layers", "1", "-o", OUT, *FAST], "nested too deeply"),
    ("gguf-more-blocks", ["prune", "{ws}/gguf-more.gguf", "--layers", "1", "-o", OUT, *FAST], "disagree"),
    ("gguf-fewer-blocks", ["prune", "{ws}/gguf-fewer.gguf", "--layers", "1", "-o", OUT, *FAST], "disagree"),
    ("gguf-string-count", ["prune", "{ws}/gguf-string.gguf", "--layers", "1", "-o", OUT, *FAST], "not a positive integer"),
    # --- issue 32.4: links are never followed out of a folder --------------------------------------------------
    ("link-side-file-stream", ["prune", "{ws}/linked", "--layers", "1", "-o", OUT, *FAST], "outside"),
    ("link-side-file-memory", ["prune", "{ws}/linked", "--drop", "1", "--metric", "bi", "-o", OUT, *FAST], "outside"),
    ("link-side-file-sweep", ["sweep", "{ws}/linked", "--drop", "1,2", "-o", OUT, *FAST], "outside"),
    ("link-upload", ["upload", "{ws}/pruned-linked", "--repo-id", "acme/x"], "outside"),
    # --- issue 32.3: sizes bounded before any work ----------------------------------------------------------------
    ("bound-layers-range", ["prune", C, "--layers", "0-99999999999", "-o", OUT, *FAST], "beyond any model"),
    ("bound-layers-index", ["prune", C, "--layers", "123456789012", "-o", OUT, *FAST], "beyond any model"),
    ("bound-calibration-tokens", ["prune", C, "--drop", "1", "--metric", "bi", "--calibration-samples", "1000000", "--seq-len", "4096", "-o", OUT, *FAST], "calibration tokens"),
    ("bound-calibration-samples", ["prune", C, "--drop", "1", "--metric", "bi", "--calibration-samples", "1000000000000", "-o", OUT, *FAST], "bound"),
    ("bound-seq-len", ["prune", C, "--drop", "1", "--metric", "bi", "--seq-len", "100000000", "--calibration-samples", "1", "-o", OUT, *FAST], "bound"),
    ("bound-rounds", ["prune", C, "--drop", "1", "--rounds", "1000000", "-o", OUT, *FAST], "bound"),
    ("bound-heal-steps", ["prune", C, "--layers", "1", "--heal", "lora", "--heal-steps", "1000000000", "--no-eval", "-o", OUT], "bound"),
    ("bound-prune-limit", ["prune", C, "--layers", "1", "--heal", "none", "--limit", "100000000000", "-o", OUT], "bound"),
    ("bound-sweep-depth", ["sweep", C, "--drop", "1,200000", "-o", OUT, *FAST], "bound"),
    ("evaluate-limit-inf", ["evaluate", C, "--no-base", "--limit", "inf"], "finite"),
    ("evaluate-limit-nan", ["evaluate", C, "--no-base", "--limit", "nan"], "finite"),
    ("evaluate-limit-huge", ["evaluate", C, "--no-base", "--limit", "1e12"], "bound"),
    ("evaluate-seq-len-huge", ["evaluate", C, "--no-base", "--seq-len", "100000000"], "bound"),
    ("recipe-samples-huge", ["prune", C, "--recipe", "{ws}/samples-huge.yaml", "-o", OUT, *FAST], "bound"),
    ("recipe-lr-inf", ["prune", C, "--recipe", "{ws}/lr-inf.yaml", "-o", OUT, *FAST], "finite"),
    # --- issue 32.8: tracebacks that become one line ------------------------------------------------------------
    ("recipe-not-utf8", ["prune", C, "--recipe", "{ws}/latin1.yaml", "-o", OUT, *FAST], "UTF-8"),
    ("recipe-int-key", ["prune", C, "--recipe", "{ws}/int-key.yaml", "-o", OUT, *FAST], "not an option name"),
    ("recipe-deep", ["prune", C, "--recipe", "{ws}/deep.yaml", "-o", OUT, *FAST], "recipe"),
    ("gguf-unloadable", ["prune", "{ws}/gguf-ok.gguf", "--drop", "1", "--metric", "bi", "-o", OUT, *FAST], "cannot load"),
    ("evaluate-report-empty", ["evaluate", "{ws}/report-empty", "--no-base", "--tasks", "none", "--perplexity", "none"], "cannot read"),
    ("evaluate-report-latin1", ["evaluate", "{ws}/report-latin1", "--no-base", "--tasks", "none", "--perplexity", "none"], "cannot read"),
    ("evaluate-report-list", ["evaluate", "{ws}/report-list", "--no-base", "--tasks", "none", "--perplexity", "none"], "not a JSON object"),
    ("evaluate-ppl-latin1", ["evaluate", C, "--no-base", "--tasks", "none", "--perplexity", "{ws}/ppl-latin1.txt", "--no-speed"], "not UTF-8"),
    ("card-report-mistyped", ["card", "{ws}/report-mistyped", "--no-plots", "--offline"], "scoring"),
    ("card-report-layers", ["card", "{ws}/report-layers", "--no-plots", "--offline"], "removed_layers"),
    ("card-report-deep", ["card", "{ws}/report-deep", "--no-plots", "--offline"], "cannot read"),
    ("card-base-card-latin1", ["card", "{ws}/pruned", "--base-card", "{ws}/card-latin1.md", "--no-plots"], "base model card"),
    ("upload-bad-revision", ["upload", "{ws}/pruned", "--repo-id", "acme/x", "--revision", "bad..name"], "not a valid branch name"),
    ("push-bad-revision", ["push", C, "--layers", "1", *FAST, "--repo-id", "acme/x", "--revision", "a b"], "not a valid branch name"),
    ("gguf-array-count", ["prune", "{ws}/gguf-array.gguf", "--layers", "1", "-o", OUT, *FAST], "not a positive integer"),
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


# --- issue 32: what is accepted, and how outputs are written ------------------------------------------------------


def test_log_json_is_renamed_into_place_and_absent_when_refused_before_any_stage(tmp_path):
    from hf_layerprune.runtime.errors import ConfigError
    from hf_layerprune.runtime.progress import Display

    log = tmp_path / "events.jsonl"
    with pytest.raises(ConfigError):
        with Display("quiet", json_path=log) as display:
            display.message("checking")
            raise ConfigError("bad option")
    assert list(tmp_path.iterdir()) == []  # refused during the checks: no log, no temporary file
    with pytest.raises(RuntimeError):
        with Display("quiet", json_path=log) as display:
            display.message("checking")
            with display.stage("load"):
                assert not log.exists() and len(list(tmp_path.iterdir())) == 1  # a temporary sibling meanwhile
                raise RuntimeError("out of memory")
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["message", "stage_start", "stage_end"]  # a run that failed after its checks keeps its log
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]
    assert log.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open(..., "w") makes it, not mkstemp's 0600


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_links_inside_the_folder_are_followed_and_recipe_layers_may_be_an_integer(ws, tmp_path):
    from hf_layerprune.recipe import Recipe

    src = tmp_path / "src"
    shutil.copytree(ws / "ckpt", src)
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "template-link.jinja").symlink_to(src / "chat_template.jinja")  # inside the folder: fine
    result = runner.invoke(app, ["prune", str(src), "--layers", "1", "-o", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "template-link.jinja").read_text() == "{{ messages }}"
    assert not (tmp_path / "out" / "template-link.jinja").is_symlink()
    (tmp_path / "r.yaml").write_text("layers: 1\n")
    assert Recipe.from_yaml(tmp_path / "r.yaml").layers == [1]


def test_analyze_writes_json_and_plot_by_renaming(ws, tmp_path):
    result = runner.invoke(app, ["analyze", str(ws / "ckpt"), "--metric", "bi", "--calibration-samples", "2",
                                 "--seq-len", "8", "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["metrics"]["bi"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.png"]  # no temporary file left


@pytest.mark.parametrize("token", ["hf_SecretButWrong0123456789\n", " hf_SecretButWrong0123456789 \r\n"])
def test_a_token_is_never_printed_in_any_form(ws, hub_server, token):
    result = runner.invoke(app, ["upload", str(ws / "pruned"), "--repo-id", "acme/x", "--token", token])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error:")
    assert "SecretButWrong" not in result.output


def test_scrub_covers_the_escaped_forms():
    from hf_layerprune.hub.calls import scrub

    token = "hf_abc123456789\n"
    for text in (f"bad header {token!r}", f"bad header {token}", 'json "hf_abc123456789\\n"', "b'Bearer hf_abc123456789'"):
        assert "abc123456789" not in scrub(text, token), text


@pytest.mark.parametrize("env, phrase", [({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
                                         ({"WORLD_SIZE": "2"}, "MASTER_ADDR"),
                                         ({"WORLD_SIZE": "2", "RANK": "7", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}, "RANK=7")])
def test_a_malformed_launch_is_one_line_not_a_wait(ws, tmp_path, monkeypatch, env, phrase):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["prune", str(ws / "ckpt"), "--layers", "1", "-o", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    assert result.stderr.strip().splitlines()[-1].startswith("Error:") and phrase in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_outputs_drop_an_auto_map_whose_code_they_do_not_carry(ws, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ws / "ckpt", src)
    config = json.loads((src / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "acme/evil--modeling_x.XModel"}
    (src / "config.json").write_text(json.dumps(config))
    (src / "configuration_x.py").write_text("raise SystemExit('never run')\n")
    for route in (["--layers", "1"], ["--drop", "1", "--metric", "bi", "--calibration-samples", "2", "--seq-len", "8"]):
        out = tmp_path / f"out{len(route)}"
        result = runner.invoke(app, ["prune", str(src), *route, "-o", str(out), *FAST])
        assert result.exit_code == 0, result.output
        assert "auto_map" not in json.loads((out / "config.json").read_text())
        assert not list(out.glob("*.py"))


# --- issue 32.7: killed runs and Hub litter ------------------------------------------------------------------------


def test_push_work_folders_of_killed_runs_are_swept_and_kept_ones_are_not(tmp_path, monkeypatch):
    import socket
    import tempfile

    from hf_layerprune.runtime.outputs import OWNER_FILE, release, work_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = socket.gethostname()
    for name, owner in {"dead": f"{host} 999999999", "live": f"{host} {__import__('os').getpid()}",
                        "other-host": "elsewhere 1", "kept": None}.items():
        (tmp_path / f"hf-layerprune-push-{name}").mkdir()
        if owner:
            (tmp_path / f"hf-layerprune-push-{name}" / OWNER_FILE).write_text(owner + "\n")
    work = work_dir("hf-layerprune-push-")
    assert (work / OWNER_FILE).read_text().split() == [host, str(__import__("os").getpid())]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "hf-layerprune-push-dead" not in left  # its process is gone
    assert {"hf-layerprune-push-live", "hf-layerprune-push-other-host", "hf-layerprune-push-kept"} <= set(left)
    release(work)  # kept for `upload`: a later run leaves it alone
    work_dir("hf-layerprune-push-")
    assert work.is_dir()


def test_a_publish_removes_stale_staging_branches_and_keeps_a_live_one(ws, hub_server):
    import time

    from huggingface_hub import HfApi

    from hf_layerprune import hub

    api = HfApi(token=WRITE_TOKEN)
    api.create_repo("acme/litter")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="notes.txt", repo_id="acme/litter")
    now = int(time.time())
    live, stale, legacy = (f"layerprune-staging-{now - 60}-aa", f"layerprune-staging-{now - 7 * 3600}-bb",
                           "layerprune-staging-0badc0de")
    for branch in (live, stale, legacy, "dev"):
        api.create_branch("acme/litter", branch=branch)
    hub.publish_folder(ws / "pruned", "acme/litter", token=WRITE_TOKEN, exist_ok=True)
    assert set(hub_server.refs("acme/litter")) == {"main", "dev", live}


@pytest.mark.parametrize("revision", ["bad..name", "refs/pr/999"])
def test_a_failed_publish_deletes_the_repo_it_created(ws, hub_server, revision):
    from hf_layerprune import hub
    from hf_layerprune.runtime.errors import LayerPruneError

    with pytest.raises(LayerPruneError):
        hub.publish_folder(ws / "pruned", "acme/fresh", token=WRITE_TOKEN, revision=revision)
    assert hub_server.refs("acme/fresh") == {}  # the repo this call created is gone again


def test_a_killed_runs_temporary_log_is_removed_by_the_next_write(tmp_path):
    import socket

    from hf_layerprune.runtime.outputs import write_text_atomic

    host = socket.gethostname()
    dead = tmp_path / f".s.json.tmp-{host}-999999999-abc.json"
    live = tmp_path / f".s.json.tmp-{host}-{__import__('os').getpid()}-def.json"
    other = tmp_path / ".s.json.tmp-elsewhere-1-ghi.json"
    for path in (dead, live, other):
        path.write_text("{")
    write_text_atomic(tmp_path / "s.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "s.json"])
