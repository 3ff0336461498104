"""Sub-layer (attention-only, MLP-only) cuts of Llama models as llama.cpp `deci` GGUF files.

Checked here against what llama.cpp's source says (src/models/deci.cpp of the llama.cpp that llama-cpp-python
0.3.36 vendors; docs/gguf.md "Sub-layer cuts"): the tensors its deci loader creates per block (attention tensors
exactly where `head_count_kv > 0`, FFN tensors exactly where `feed_forward_length > 0`), and the logits of a NumPy
transcription of deci.cpp's graph run on the GGUF's own tensors, which must equal the DeciLM model's (transformers,
our classes) on the same tokens. That graph drops a block's attention output when its FFN length is 0, so an
MLP-removed block is written with a zero FFN of width 1 (gguf_export.mlp_standin); the transcription keeps deci.cpp's
`continue` and so would fail if one were written with 0. tests/test_gguf_llamacpp.py (slow) runs both cuts in a
real llama.cpp.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from typer.testing import CliRunner

from hf_layerprune.surgery.checkpoint import load_checkpoint
from hf_layerprune.cli import app
from tiny_models import sample_ids, save_word_tokenizer, tiny_model

runner = CliRunner()


def fields(reader: GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_norm(x, base):
    """ggml_rope_ext, mode 0 (LLAMA_ROPE_TYPE_NORM, deci's): adjacent pairs (2i, 2i+1) rotated by p * base^(-2i/d)."""
    t, _, d = x.shape
    inv = base ** (-np.arange(0, d, 2) / d)
    angle = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = x.copy()
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def deci_graph(path, ids: list[int]) -> np.ndarray:
    """llm_build_deci (src/models/deci.cpp) in NumPy, on the file's tensors: logits of one sequence."""
    reader = GGUFReader(path)
    meta = fields(reader)
    w = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    n_head, n_kv = meta["deci.attention.head_count"], meta["deci.attention.head_count_kv"]
    n_ff, eps = meta["deci.feed_forward_length"], meta["deci.attention.layer_norm_rms_epsilon"]
    base, hd = meta["deci.rope.freq_base"], meta["deci.attention.key_length"]
    x = w["token_embd.weight"][ids]
    t = len(ids)
    for il in range(meta["deci.block_count"]):
        blk = lambda name: w[f"blk.{il}.{name}.weight"]  # noqa: E731
        inp_sa = x
        cur = x if n_head[il] == 0 else rms(x, blk("attn_norm"), eps)
        if n_head[il] > 0:
            q = rope_norm((cur @ blk("attn_q").T).reshape(t, n_head[il], hd), base)
            k = rope_norm((cur @ blk("attn_k").T).reshape(t, n_kv[il], hd), base)
            v = (cur @ blk("attn_v").T).reshape(t, n_kv[il], hd)
            group = n_head[il] // n_kv[il]
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
            scores = scores + np.triu(np.full((t, t), -np.inf), 1)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            cur = np.einsum("hqk,khd->qhd", probs, v).reshape(t, -1) @ blk("attn_output").T
        if n_ff[il] == 0:
            continue  # as deci.cpp: the block's attention output is dropped too
        ffn_inp = cur + inp_sa if n_head[il] > 0 else cur
        h = rms(ffn_inp, blk("ffn_norm"), eps)
        gate = h @ blk("ffn_gate").T
        x = ((gate / (1 + np.exp(-gate))) * (h @ blk("ffn_up").T)) @ blk("ffn_down").T + ffn_inp
    out = w.get("output.weight", w["token_embd.weight"])
    return rms(x, w["output_norm.weight"], eps) @ out.T


CUTS = {"attention": "1,3,4", "mlp": "1,3"}


@pytest.fixture(scope="module", params=sorted(CUTS))
def deci_out(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("deci")
    src = root / "tiny-llama"
    tiny_model("llama", num_layers=5).save_pretrained(src)
    save_word_tokenizer(src)
    out = root / "out"
    result = runner.invoke(app, ["prune", str(src), "--granularity", request.param, "--layers", CUTS[request.param],
                                 "--format", "both", "--gguf-type", "F32", "--heal", "none", "--no-eval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return src, out, request.param


def test_deci_gguf_tensors_are_what_llama_cpps_loader_creates(deci_out):
    _, out, kind = deci_out
    report = json.loads((out / "layerprune.json").read_text())
    reader = GGUFReader(out / report["gguf"]["file"])
    meta = fields(reader)
    assert meta["general.architecture"] == "deci" and meta["deci.block_count"] == 5
    if kind == "attention":
        assert meta["deci.attention.head_count"] == [4, 0, 4, 0, 0]
        assert meta["deci.attention.head_count_kv"] == [2, 0, 2, 0, 0]  # 0 too: no attention tensor, no KV cache
        assert meta["deci.feed_forward_length"] == [64] * 5
    else:  # the removed MLPs: width 1, zero weights (a width of 0 would make deci.cpp skip the attention too)
        assert meta["deci.attention.head_count"] == [4] * 5 and meta["deci.attention.head_count_kv"] == [2] * 5
        assert meta["deci.feed_forward_length"] == [64, 1, 64, 1, 64]
        standin = {t.name: np.asarray(t.data) for t in reader.tensors if t.name.startswith(("blk.1.ffn", "blk.3.ffn"))}
        assert len(standin) == 8 and all(not a.any() for n, a in standin.items() if "norm" not in n)
        assert sum(t.n_elements for t in reader.tensors if t.name.startswith("blk.1.")) < \
            sum(t.n_elements for t in reader.tensors if t.name.startswith("blk.0.")) / 2
    names = {t.name for t in reader.tensors}
    for il in range(5):
        attention = {f"blk.{il}.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output")}
        ffn = {f"blk.{il}.{n}.weight" for n in ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
        assert (attention <= names) == (meta["deci.attention.head_count_kv"][il] > 0)
        assert not (attention & names) or attention <= names
        assert ffn <= names
    assert names - {n for n in names if n.startswith("blk.")} <= {"token_embd.weight", "output_norm.weight",
                                                                  "output.weight"}
    assert meta["general.name"].endswith("-pruned-5L") and meta["general.size_label"]
    assert report["gguf"]["head_count"] == meta["deci.attention.head_count"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "llama.cpp's `deci` architecture" in card and "gguf_file=" not in card  # transformers cannot read deci


def test_deci_graph_on_the_gguf_matches_the_decilm_model(deci_out):
    _, out, _ = deci_out
    report = json.loads((out / "layerprune.json").read_text())
    model = load_checkpoint(out, dtype=torch.float32)
    ids = sample_ids(batch=1, length=10)
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits[0].numpy()
    got = deci_graph(out / report["gguf"]["file"], ids[0].tolist())
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_other_families_are_refused_before_any_work(tmp_path):
    qwen = tmp_path / "qwen"
    tiny_model("qwen2", num_layers=4).save_pretrained(qwen)
    result = runner.invoke(app, ["prune", str(qwen), "--granularity", "attention", "--layers", "1", "--format",
                                 "gguf", "--heal", "none", "--no-eval", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "runs Llama blocks only, not qwen2" in result.stderr
    assert "Loading" not in result.output and not (tmp_path / "out").exists()


def test_gguf_only_sublayer_output_keeps_just_the_gguf(tmp_path):
    src = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(src)
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(src), "--granularity", "attention", "--layers", "2", "--format", "gguf",
                                 "--heal", "none", "--no-eval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".gguf", ".safetensors", ".py", ".json")) == \
        ["generation_config.json", "layerprune.json", "src-pruned-4L.BF16.gguf"]
