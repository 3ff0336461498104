"""GGUF in, GGUF out: surgery on the file (quantized bytes copied), export of transformers models, the CLI route.

Every tiny family is written to GGUF by our exporter (Q8_0, so that there are quantized blocks to keep), cut by
`prune_gguf`, and read back by transformers (`gguf_file=`) and by the `gguf` package's own reader (which checks
offsets and alignment independently of our scanner).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType, GGUFWriter, GGMLQuantizationType
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from hf_layerprune.cli import app
from hf_layerprune.runtime.errors import LayerPruneError
from hf_layerprune.surgery.gguf_export import export_gguf
from hf_layerprune.surgery.gguf_surgery import prune_gguf, read_header
from hf_layerprune.surgery.layers import remove_layers
from tiny_models import sample_ids, tiny_model

runner = CliRunner()
# transformers' GGUF loader reads no head_dim for qwen3 (it keeps the config default, 128) and no sliding window
GGUF_FAMILIES = {"llama": {}, "mistral": {}, "qwen2": dict(use_sliding_window=False), "qwen3": dict(head_dim=128,
                 use_sliding_window=False)}
REMOVED = [1, 3]


def load_gguf(path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module", params=list(GGUF_FAMILIES))
def q8_source(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp(family) / f"tiny-{family}.Q8_0.gguf"
    export_gguf(tiny_model(family, num_layers=6, **GGUF_FAMILIES[family]), path, out_type="Q8_0")
    return path


def test_surgery_matches_the_transformers_cut_and_keeps_quantized_bytes(q8_source, tmp_path):
    out = tmp_path / "pruned.gguf"
    info = prune_gguf(q8_source, out, REMOVED)
    assert info["kept_layers"] == [0, 2, 4, 5]
    reference = load_gguf(q8_source)
    remove_layers(reference, REMOVED)
    pruned = load_gguf(out)
    assert pruned.config.num_hidden_layers == 4
    ids = sample_ids()
    assert torch.equal(logits(pruned, ids), logits(reference, ids))  # atol 0

    src, dst = GGUFReader(q8_source), GGUFReader(out)
    source = {t.name: t for t in src.tensors}
    assert dst.fields[f"{dst.fields['general.architecture'].contents()}.block_count"].contents() == 4
    kept = {0: 0, 1: 2, 2: 4, 3: 5}
    quantized = 0
    for t in dst.tensors:
        parts = t.name.split(".")
        old = ".".join(["blk", str(kept[int(parts[1])]), *parts[2:]]) if parts[0] == "blk" else t.name
        assert t.tensor_type == source[old].tensor_type
        assert np.asarray(t.data).tobytes() == np.asarray(source[old].data).tobytes(), t.name
        quantized += t.tensor_type == GGMLQuantizationType.Q8_0
    assert quantized >= 4 * 7  # every kept block's matrices are Q8_0 blocks, copied
    assert len(dst.tensors) == len(src.tensors) - 2 * sum(t.name.startswith("blk.1.") for t in src.tensors)


def per_layer_file(path, n=5):
    """A GGUF with per-layer arrays of several types, arrays that only look per-layer, and a tensor per block."""
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(n)
    writer.add_array("llama.feed_forward_length", [100 + i for i in range(n)])
    writer.add_key_value("llama.attention.sliding_window_pattern", [i % 2 == 0 for i in range(n)],
                         GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    writer.add_key_value("llama.rope.freq_scale_per_layer", [0.5 * i for i in range(n)], GGUFValueType.ARRAY,
                         sub_type=GGUFValueType.FLOAT32)
    writer.add_array("llama.layer_names", [f"layer{i}" for i in range(n)])
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(n)])  # not under llama.: never sliced
    writer.add_array("llama.other", list(range(n + 1)))
    writer.add_array("llama.rope.dimension_sections", list(range(n)))  # fixed length, here equal to n by chance
    writer.add_uint32("llama.nextn_predict_layers", 1)  # the last block is an MTP layer
    writer.add_custom_alignment(64)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    for i in range(n):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.full(7, i, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_every_per_layer_array_is_sliced_and_nothing_else(tmp_path):
    per_layer_file(tmp_path / "src.gguf")
    info = prune_gguf(tmp_path / "src.gguf", tmp_path / "out.gguf", [1, 2])
    assert info["per_layer_keys"] == ["llama.attention.sliding_window_pattern", "llama.feed_forward_length",
                                      "llama.layer_names", "llama.rope.freq_scale_per_layer"]
    r = GGUFReader(tmp_path / "out.gguf")
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["llama.block_count"] == 3
    assert f["llama.feed_forward_length"] == [100, 103, 104]
    assert f["llama.attention.sliding_window_pattern"] == [True, False, True]
    assert f["llama.rope.freq_scale_per_layer"] == [0.0, 1.5, 2.0]
    assert f["llama.layer_names"] == ["layer0", "layer3", "layer4"]
    assert f["tokenizer.ggml.tokens"] == [f"t{i}" for i in range(5)]
    assert f["llama.other"] == list(range(6))
    assert f["llama.rope.dimension_sections"] == list(range(5))
    assert r.alignment == 64 and all(t.data_offset % 64 == 0 for t in r.tensors)
    assert r.fields["llama.block_count"].types == [GGUFValueType.UINT32]  # the source's value type is kept
    blocks = {t.name: t.data.tolist() for t in r.tensors if t.name.startswith("blk.")}
    assert blocks == {"blk.0.attn_norm.weight": [0.0] * 7, "blk.1.attn_norm.weight": [3.0] * 7,
                      "blk.2.attn_norm.weight": [4.0] * 7}


@pytest.mark.parametrize("removed, message", [([5], "within 0..4"), ([0, 1, 2, 3, 4], "every layer"), ([], "within"),
                                              ([2, 4], "multi-token-prediction")])
def test_bad_cuts_are_refused(tmp_path, removed, message):
    per_layer_file(tmp_path / "src.gguf")
    with pytest.raises(LayerPruneError, match=message):
        prune_gguf(tmp_path / "src.gguf", tmp_path / "out.gguf", removed)


def test_index_patterned_architectures_keep_the_phase(tmp_path):
    writer = GGUFWriter(tmp_path / "g.gguf", "gemma2")
    writer.add_block_count(6)
    for i in range(6):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LayerPruneError, match="out of phase"):
        prune_gguf(tmp_path / "g.gguf", tmp_path / "o.gguf", [3])
    assert prune_gguf(tmp_path / "g.gguf", tmp_path / "o.gguf", [2, 3])["kept_layers"] == [0, 1, 4, 5]


def test_not_a_gguf_and_truncated_files_are_refused(tmp_path, q8_source):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all, just some bytes")
    with pytest.raises(LayerPruneError, match="not a readable GGUF"):
        read_header(tmp_path / "x.gguf")
    (tmp_path / "cut.gguf").write_bytes(q8_source.read_bytes()[:-100])
    with pytest.raises(LayerPruneError, match="truncated"):
        read_header(tmp_path / "cut.gguf")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_export_is_exact_in_f32_and_close_in_q8(family, tmp_path):
    model = tiny_model(family, num_layers=3, **GGUF_FAMILIES[family])
    ids = sample_ids()
    export_gguf(model, tmp_path / "f32.gguf", out_type="F32")
    assert torch.equal(logits(load_gguf(tmp_path / "f32.gguf"), ids), logits(model, ids))
    export_gguf(model, tmp_path / "q8.gguf", out_type="Q8_0")
    assert torch.allclose(logits(load_gguf(tmp_path / "q8.gguf"), ids), logits(model, ids), atol=0.05)
    types = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "q8.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"


def test_export_refuses_other_families(tmp_path):
    with pytest.raises(LayerPruneError, match="GGUF export supports"):
        export_gguf(tiny_model("phi3", num_layers=2), tmp_path / "x.gguf")


# --- CLI ----------------------------------------------------------------------------------------------------------


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def save_bpe_tokenizer(directory) -> int:
    """A byte-level BPE tokenizer (the kind the GGUF exporter writes) trained on a line of text; its size."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 3, "hello world of tiny models"],
                            vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.save_pretrained(directory)
    return len(tokenizer)


@pytest.fixture(scope="module")
def llama_q8(tmp_path_factory):
    """A Q8_0 tiny llama with its tokenizer in the file (healing needs one)."""
    folder = tmp_path_factory.mktemp("cli")
    vocab = save_bpe_tokenizer(folder / "tokenizer")
    path = folder / "tiny-llama.Q8_0.gguf"
    export_gguf(tiny_model("llama", num_layers=6, vocab_size=vocab), path, out_type="Q8_0",
                tokenizer_dir=folder / "tokenizer")
    return path


def test_gguf_source_writes_both_formats_with_equal_logits(llama_q8, tmp_path):
    out = tmp_path / "out"
    result = invoke("prune", llama_q8, "--layers", "1,3", "-o", out, "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert "tiny-llama.Q8_0-pruned-4L.gguf" in files and "model.safetensors" in files
    report = json.loads((out / "layerprune.json").read_text())
    assert report["recipe"]["format"] == "both" and report["gguf"]["route"] == "surgery"
    assert report["gguf"]["requantized"] == {}
    from_gguf = load_gguf(out / "tiny-llama.Q8_0-pruned-4L.gguf")
    from_safetensors = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = sample_ids()
    assert torch.equal(logits(from_gguf, ids), logits(from_safetensors, ids))


def test_gguf_only_cut_never_loads_the_model(llama_q8, tmp_path, monkeypatch):
    import hf_layerprune.flow.stages as stages

    monkeypatch.setattr(stages, "load_model", lambda *a, **k: pytest.fail("the GGUF cut loaded the model"))
    out = tmp_path / "out"
    result = invoke("prune", llama_q8, "--layers", "4-5", "-o", out, "--format", "gguf", "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "layerprune.json", "tiny-llama.Q8_0-pruned-4L.gguf"]
    report = json.loads((out / "layerprune.json").read_text())
    assert report["route"] == "gguf" and report["kept_layers"] == [0, 1, 2, 3]
    assert report["parameters_after"] < report["parameters_before"]


def test_healed_tensors_are_requantized_to_the_source_type(llama_q8, tmp_path):
    out = tmp_path / "out"
    result = invoke("prune", llama_q8, "--layers", "2", "-o", out, "--heal", "linear", "--no-eval",
                    "--calibration-samples", "4", "--seq-len", "16")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    requantized = report["gguf"]["requantized"]
    assert requantized == {"blk.1.ffn_down.weight": {"from": "Q8_0", "to": "Q8_0"}}  # linear folds T into it
    healed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    from_gguf = load_gguf(out / "tiny-llama.Q8_0-pruned-5L.gguf")
    ids = sample_ids()
    assert torch.allclose(logits(from_gguf, ids), logits(healed, ids), atol=0.05)
    src, dst = GGUFReader(llama_q8), GGUFReader(out / "tiny-llama.Q8_0-pruned-5L.gguf")
    assert dst.tensors[0].name == src.tensors[0].name
    same = {t.name: t for t in src.tensors}
    for t in dst.tensors:  # every other tensor's bytes are the source's
        if t.name.startswith("blk.0.") or not t.name.startswith("blk."):
            assert np.asarray(t.data).tobytes() == np.asarray(same[t.name].data).tobytes()


def test_nearest_writable_type_for_dequantize_only_sources():
    from hf_layerprune.flow.gguf_route import _writable_type

    rows = np.zeros((2, 256), dtype=np.float32)
    Q = GGMLQuantizationType
    assert [_writable_type(t, rows) for t in (Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K, Q.Q2_K, Q.F16)] == \
        [Q.Q4_1, Q.Q8_0, Q.Q4_1, Q.Q8_0, Q.Q4_0, Q.F16]
    assert _writable_type(Q.Q8_0, np.zeros((2, 48), dtype=np.float32)) == Q.F16  # rows not a multiple of 32


def test_healer_that_adds_tensors_is_refused_for_gguf(llama_q8, tmp_path):
    out = tmp_path / "out"
    result = invoke("prune", llama_q8, "--layers", "2", "-o", out, "--heal", "bias", "--no-eval",
                    "--calibration-samples", "4", "--seq-len", "16")
    assert result.exit_code == 2 and "no slot for" in result.output and "--format safetensors" in result.output
    assert "Loading" not in result.output  # refused before any work
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_added_nonzero_tensors_are_refused_after_healing(llama_q8, tmp_path):
    """The backstop behind the early check: a tensor the healed model has and the GGUF file has not."""
    from hf_layerprune.flow.gguf_route import changed_tensors
    from hf_layerprune.surgery.loading import resolve_source

    model = load_gguf(llama_q8)
    remove_layers(model, [2])
    model.model.layers[1].mlp.down_proj.bias = torch.nn.Parameter(torch.ones(32))
    with pytest.raises(LayerPruneError, match="down_proj.bias, which the GGUF file has no tensor for"):
        changed_tensors(model, resolve_source(str(llama_q8)), [2])


def test_safetensors_source_exports_gguf(tmp_path):
    src = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(src)
    out = tmp_path / "out"
    result = invoke("prune", src, "--layers", "1", "-o", out, "--format", "both", "--gguf-type", "Q8_0",
                    "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["gguf"]["route"] == "export" and report["gguf"]["type"] == "Q8_0"
    gguf_model = load_gguf(out / report["gguf"]["file"])
    assert gguf_model.config.num_hidden_layers == 3
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = sample_ids()
    assert torch.allclose(logits(gguf_model, ids), logits(pruned, ids), atol=0.05)


def test_an_unrecognised_pre_tokenizer_is_written_as_default_with_a_warning(tmp_path):
    """llama.cpp splits text by the regexes `tokenizer.ggml.pre` names, recognised as its converter does (by the
    hash of a fixed text's token ids); a tokenizer it does not know gets "default", a warning and a null in the
    report. (A known one, SmolLM2's "smollm", is checked in llama.cpp by tests/test_gguf_llamacpp.py.)"""
    from gguf import GGUFReader

    from hf_layerprune.surgery.gguf_export import pre_tokenizer

    src = tmp_path / "src"
    vocab = save_bpe_tokenizer(src)
    tiny_model("llama", num_layers=3, vocab_size=vocab).save_pretrained(src)
    assert pre_tokenizer(src) is None
    out = tmp_path / "out"
    result = invoke("prune", src, "--layers", "1", "-o", out, "--format", "gguf", "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    assert "llama.cpp does not know this tokenizer's pre-tokenizer" in result.output
    report = json.loads((out / "layerprune.json").read_text())
    assert report["gguf"]["tokenizer"] is True and report["gguf"]["tokenizer_pre"] is None
    reader = GGUFReader(out / report["gguf"]["file"])
    assert reader.fields["tokenizer.ggml.pre"].contents() == "default"


@pytest.mark.parametrize("args, message", [
    (("--format", "onnx"), "unknown --format"),
    (("--format", "gguf", "--granularity", "mlp"), "whole-layer cuts only"),
    (("--gguf-type", "Q4_K"), "unknown --gguf-type"),
])
def test_bad_format_options_are_refused(llama_q8, tmp_path, args, message):
    result = invoke("prune", llama_q8, "--layers", "1", "-o", tmp_path / "out", "--heal", "none", "--no-eval", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_smollm2_q4_1_cut(tmp_path):
    from tiny_models import smollm2_gguf

    source = smollm2_gguf()
    out = tmp_path / "out"
    result = invoke("prune", source, "--layers", "20-25", "-o", out, "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    name = "SmolLM2-135M-Instruct.Q4_1-pruned-24L.gguf"
    src, dst = GGUFReader(source), GGUFReader(out / name)
    assert dst.fields["llama.block_count"].contents() == 24
    meta = {k: f.contents() for k, f in dst.fields.items()}
    assert src.fields["general.size_label"].contents() == "135M" and meta["general.size_label"] == "113M"
    assert meta["general.name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2-pruned-24L"
    assert meta["general.finetune"] == "8k-lc100k-mix1-ep2-pruned-24L" and meta["general.basename"] == "smollm2"
    assert meta["general.base_model.count"] == 1
    assert meta["general.base_model.0.name"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert meta["general.license"] == "apache-2.0" and meta["general.languages"] == ["en"]  # the source's, kept
    old = {t.name: t for t in src.tensors}
    for t in dst.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= 20:
            parts[1] = str(int(parts[1]) + 6)
        assert np.asarray(t.data).tobytes() == np.asarray(old[".".join(parts)].data).tobytes()
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 1345, 30, 2]])
    gguf_logits = logits(load_gguf(out / name), ids)
    st_logits = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids)
    assert torch.equal(gguf_logits, st_logits)


def test_push_publishes_and_reads_back_the_gguf(hub_server, llama_q8, tmp_path):
    from conftest import ORG, WRITE_TOKEN

    repo = f"{ORG}/tiny-gguf"
    out = tmp_path / "local"
    result = runner.invoke(app, ["push", str(llama_q8), "--layers", "4-5", "--format", "gguf", "--heal", "none",
                                 "--no-eval", "--repo-id", repo, "-o", str(out), "--token", WRITE_TOKEN])
    assert result.exit_code == 0, result.output
    name = "tiny-llama.Q8_0-pruned-4L.gguf"
    assert f"Verified {name} before it reached main: read back from the Hub" in result.stderr
    files = hub_server.files(repo)
    assert {name, "README.md", "layerprune.json"} <= set(files)
    from huggingface_hub import hf_hub_download

    pushed = hf_hub_download(repo, name, cache_dir=tmp_path / "cache")
    assert open(pushed, "rb").read() == (out / name).read_bytes()
    card = open(hf_hub_download(repo, "README.md", cache_dir=tmp_path / "cache"), encoding="utf-8").read()
    assert "library_name: gguf" in card and "- gguf" in card and f"llama-cli -m {name}" in card
    from hf_layerprune.flow.finish import rerender

    hub_card = rerender(out, repo_id=repo, plots=False, online=False).read_text(encoding="utf-8")
    assert f"llama-cli -hf {repo}" in hub_card and f"ollama run hf.co/{repo}" in hub_card


@pytest.mark.slow
def test_real_smollm2_healed_tensor_requantized_to_q4_1(tmp_path):
    from tiny_models import smollm2_gguf

    source = smollm2_gguf()
    out = tmp_path / "out"
    result = invoke("prune", source, "--layers", "20-25", "-o", out, "--heal", "linear:keep_if_better=false", "--no-eval",
                    "--calibration-samples", "8", "--seq-len", "64")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    requantized = report["gguf"]["requantized"]
    assert requantized["blk.19.ffn_down.weight"] == {"from": "Q4_1", "to": "Q4_1"}, requantized
    assert all(v["from"] == v["to"] for v in requantized.values()), requantized  # Q4_1 / Q8_0: quantizable
    from gguf import quants
    from safetensors import safe_open

    name = "SmolLM2-135M-Instruct.Q4_1-pruned-24L.gguf"
    written = {t.name: t for t in GGUFReader(out / name).tensors}["blk.19.ffn_down.weight"]
    with safe_open(out / "model.safetensors", "np") as f:
        healed = f.get_tensor("model.layers.19.mlp.down_proj.weight").astype(np.float32)
    assert written.tensor_type == GGMLQuantizationType.Q4_1
    assert np.asarray(written.data).tobytes() == quants.quantize(healed, GGMLQuantizationType.Q4_1).tobytes()
    assert load_gguf(out / name).config.num_hidden_layers == 24


# --- general.* metadata (gguf_metadata.py) -------------------------------------------------------------------------


def fields(path) -> dict:
    """Every metadata value of a GGUF file, read by the gguf package's own reader."""
    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}, reader


def expected_size_label(reader) -> str:
    """Parameters counted from the written tensors (no experts in these families)."""
    from gguf.utility import model_weight_count_rounded_notation

    return model_weight_count_rounded_notation(sum(int(t.n_elements) for t in reader.tensors), min_digits=2)


def test_cut_gguf_says_it_is_pruned_on_every_family(q8_source, tmp_path):
    from hf_layerprune.surgery.gguf_metadata import CardFields

    card = CardFields(base="acme/tiny-base", hub=True, license="apache-2.0", tags=["layer-pruning", "gguf"])
    # a source that already names a base (its own) and carries an old size label: both must be replaced
    first = tmp_path / "first.gguf"
    prune_gguf(q8_source, first, [0], card=CardFields(base="other/original", hub=True, license="mit"))
    before, _ = fields(first)
    assert before["general.base_model.0.repo_url"] == "https://huggingface.co/other/original"
    out = tmp_path / "pruned.gguf"
    prune_gguf(first, out, [1, 3], card=card)
    meta, reader = fields(out)
    assert meta["general.size_label"] == expected_size_label(reader) != before["general.size_label"]
    assert meta["general.name"] == "model-pruned-3L" and meta["general.finetune"] == "pruned-3L"  # once, not twice
    assert meta["general.base_model.count"] == 1
    assert meta["general.base_model.0.name"] == "tiny-base"
    assert meta["general.base_model.0.organization"] == "acme"
    assert meta["general.base_model.0.repo_url"] == "https://huggingface.co/acme/tiny-base"
    assert meta["general.license"] == "apache-2.0" and meta["general.tags"] == ["layer-pruning", "gguf"]
    assert not [k for k in meta if k.startswith("general.base_model.1")]
    # without a card the source file is the base, with no URL and the source's licence kept
    plain = tmp_path / "plain.gguf"
    prune_gguf(first, plain, [2])
    meta, _ = fields(plain)
    assert meta["general.base_model.0.name"] == "first.gguf" and "general.base_model.0.repo_url" not in meta
    assert meta["general.license"] == "mit"


@pytest.mark.parametrize("family", list(GGUF_FAMILIES))
def test_exported_gguf_carries_the_cards_licence_and_tags(family, tmp_path):
    from huggingface_hub import ModelCard

    src = tmp_path / "tiny-src"
    tiny_model(family, num_layers=4, **GGUF_FAMILIES[family]).save_pretrained(src)
    (src / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n", encoding="utf-8")
    out = tmp_path / "out"
    result = invoke("prune", src, "--layers", "1", "-o", out, "--format", "gguf", "--gguf-type", "Q8_0",
                    "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    meta, reader = fields(out / report["gguf"]["file"])
    card = ModelCard.load(out / "README.md").data
    assert card.license == "mit" and meta["general.license"] == "mit"
    assert meta["general.tags"] == card.tags and "pruned" in card.tags and "gguf" in card.tags
    assert meta["general.name"] == "tiny-src-pruned-3L" and meta["general.basename"] == "tiny-src"
    assert meta["general.size_label"] == expected_size_label(reader)
    assert meta["general.base_model.0.name"] == "tiny-src" and "general.base_model.0.repo_url" not in meta


def test_gguf_surgery_route_names_the_source_file(llama_q8, tmp_path):
    out = tmp_path / "out"
    result = invoke("prune", llama_q8, "--layers", "4-5", "-o", out, "--format", "gguf", "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    meta, reader = fields(out / "tiny-llama.Q8_0-pruned-4L.gguf")
    assert meta["general.base_model.0.name"] == "tiny-llama.Q8_0.gguf" and meta["general.name"] == "model-pruned-4L"
    assert meta["general.size_label"] == expected_size_label(reader)
    assert "pruned" in meta["general.tags"] and "gguf" in meta["general.tags"]


# --- push --format both: the GGUF in a repo of its own (gguf_publish.split_views) ---------------------------------


def push_both(llama_q8, out, repo, *extra):
    from conftest import WRITE_TOKEN

    return runner.invoke(app, ["push", str(llama_q8), "--layers", "4-5", "--heal", "none", "--no-eval", "--repo-id",
                               repo, "-o", str(out), "--token", WRITE_TOKEN, *map(str, extra)])


def test_push_both_puts_the_gguf_in_its_own_repo_with_a_quantized_edge(hub_server, llama_q8, tmp_path):
    from conftest import ORG

    repo, name = f"{ORG}/tiny-both", "tiny-llama.Q8_0-pruned-4L.gguf"
    result = push_both(llama_q8, tmp_path / "out", repo)
    assert result.exit_code == 0, result.output
    model_files, gguf_files = set(hub_server.files(repo)), set(hub_server.files(f"{repo}-GGUF"))
    assert "model.safetensors" in model_files and name not in model_files
    assert {name, "README.md", "layerprune.json"} <= gguf_files and not any(f.endswith(".safetensors") for f in gguf_files)
    assert hub_server.model_tree(f"{repo}-GGUF") == {"base_model": [repo], "base_model_relation": "quantized"}
    assert "max |diff|" in result.stderr  # the pruned repo was reloaded with transformers, as today
    assert f"Verified {name} before it reached main" in result.stderr
    assert result.stdout.strip() == f"{hub_server.url}/{repo}"
    gguf_card = hub_server.read(f"{repo}-GGUF", "README.md").decode()
    assert "library_name: gguf" in gguf_card and f"llama-cli -hf {repo}-GGUF" in gguf_card
    assert f"the GGUF build of [`{repo}`](https://huggingface.co/{repo})" in gguf_card
    model_card = hub_server.read(repo, "README.md").decode()
    assert f"llama-cli -hf {repo}-GGUF" in model_card and "library_name: transformers" in model_card
    out = tmp_path / "out"
    assert (out / name).is_file() and not (out / ".publish").exists()  # the local folder is as the run left it


def test_failed_gguf_push_keeps_the_pruned_repo_and_says_how_to_resume(hub_server, llama_q8, tmp_path):
    from conftest import ORG, WRITE_TOKEN

    repo, gguf_repo = f"{ORG}/tiny-both", f"{ORG}/tiny-gguf-elsewhere"
    hub_server.inject("POST", f"/api/models/{gguf_repo}/commit/", 403, times=1)
    result = push_both(llama_q8, tmp_path / "out", repo, "--gguf-repo-id", gguf_repo)
    assert result.exit_code != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and f"{repo} is published and verified" in last
    resume = f"hf-layerprune upload {tmp_path / 'out'} --repo-id {repo} --gguf-repo-id {gguf_repo} --gguf-only"
    assert resume in last
    assert "model.safetensors" in hub_server.files(repo)  # the first push stands
    assert hub_server.store.repo(gguf_repo) is None or not any(f.endswith(".gguf") for f in hub_server.files(gguf_repo))
    result = runner.invoke(app, ["upload", str(tmp_path / "out"), "--repo-id", repo, "--gguf-repo-id", gguf_repo,
                                 "--gguf-only", "--token", WRITE_TOKEN])
    assert result.exit_code == 0, result.output
    assert hub_server.model_tree(gguf_repo) == {"base_model": [repo], "base_model_relation": "quantized"}
    assert len(hub_server.commits(repo)) == 2  # the resume did not push the pruned repo again (initial + model)


def test_hub_refuses_a_gguf_card_whose_base_is_missing(hub_server, llama_q8, tmp_path):
    """The local Hub checks the model tree as the Hub does: a quantized edge to a repo that is not there fails."""
    from conftest import ORG, WRITE_TOKEN

    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(llama_q8), "--layers", "4-5", "--heal", "none", "--no-eval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["upload", str(out), "--repo-id", f"{ORG}/never-pushed", "--gguf-only",
                                 "--token", WRITE_TOKEN])
    assert result.exit_code != 0
    assert '"base_model" with value "acme/never-pushed" is not valid' in result.stderr.replace("\n", " ")


def test_upload_of_a_both_folder_says_how_to_resume_the_gguf(hub_server, llama_q8, tmp_path):
    from conftest import ORG, WRITE_TOKEN

    out, repo = tmp_path / "out", f"{ORG}/tiny-upload-both"
    result = runner.invoke(app, ["prune", str(llama_q8), "--layers", "4-5", "--heal", "none", "--no-eval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    hub_server.inject("POST", f"/api/models/{repo}-GGUF/commit/", 403, times=1)
    result = runner.invoke(app, ["upload", str(out), "--repo-id", repo, "--token", WRITE_TOKEN])
    assert result.exit_code != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"{repo} is published and verified" in last
    assert f"`hf-layerprune upload {out} --repo-id {repo} --gguf-repo-id {repo}-GGUF --gguf-only`" in last
    assert not (out / ".publish").exists()


def test_hub_source_is_named_by_its_repo_in_the_gguf(hub_server, tmp_path):
    from conftest import ORG, WRITE_TOKEN
    from huggingface_hub import HfApi

    src = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(src)
    (src / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n", encoding="utf-8")
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(f"{ORG}/tiny-base")
    api.upload_folder(repo_id=f"{ORG}/tiny-base", folder_path=str(src))
    out = tmp_path / "out"
    result = invoke("prune", f"{ORG}/tiny-base", "--layers", "1", "-o", out, "--format", "gguf", "--gguf-type", "Q8_0",
                    "--heal", "none", "--no-eval")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "layerprune.json").read_text())
    meta, _ = fields(out / report["gguf"]["file"])
    assert meta["general.base_model.0.name"] == "tiny-base" and meta["general.base_model.0.organization"] == ORG
    assert meta["general.base_model.0.repo_url"] == f"https://huggingface.co/{ORG}/tiny-base"
    assert meta["general.license"] == "mit" and meta["general.name"] == "tiny-base-pruned-3L"
