"""Export a transformers model of a stock family to GGUF (F32, BF16 or Q8_0), with llama.cpp's names.

Tensor names come from the `gguf` package's own map (`gguf.get_tensor_name_map(MODEL_ARCH.X, n_blocks)`, the
table llama.cpp's convert_hf_to_gguf.py uses) and metadata keys from its `GGUFWriter.add_*` helpers. As in
convert_hf_to_gguf.py, llama/mistral Q and K rows are permuted to llama.cpp's rotary layout (transformers'
GGUF loader undoes it), 1-D tensors (norms, biases) stay F32 and Q8_0 falls back to F16 for rows that are not
a multiple of 32. The tokenizer is written when the model directory has a `tokenizer.json` (gguf.vocab).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_layerprune.errors import LayerPruneError

EXPORT_TYPES = ("F32", "BF16", "Q8_0")
# transformers model_type -> gguf MODEL_ARCH member name
FAMILIES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3"}
PERMUTED = ("llama", "mistral")  # convert_hf_to_gguf.py's LlamaModel.permute


def check_exportable(config) -> None:
    if config.model_type not in FAMILIES:
        raise LayerPruneError(
            f"GGUF export supports {', '.join(FAMILIES)}, not {config.model_type}; use --format safetensors"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise LayerPruneError(f"GGUF export of RoPE type {rope['rope_type']!r} is not supported; use --format safetensors")


def permute(w, n_head: int):
    """convert_hf_to_gguf.py LlamaModel.permute: HF's half-split rotary rows -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_config(writer, config) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is not None:
        writer.add_rope_freq_base(float(theta))


def _write_tokenizer(writer, directory: Path | None) -> bool:
    if directory is None or not (Path(directory) / "tokenizer.json").exists():
        return False
    import json

    from gguf import SpecialVocab

    model = json.loads((Path(directory) / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        return False  # sentencepiece-style vocabularies need llama.cpp's own converter
    from gguf.vocab import BpeVocab

    vocab = BpeVocab(Path(directory))
    tokens, _, types = zip(*vocab.all_tokens())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(tokens))
    writer.add_token_types([int(t) for t in types])
    SpecialVocab(Path(directory), load_merges=True).add_to_gguf(writer)
    return True


def tensor_type(name: str, array, want: str):
    from gguf import GGMLQuantizationType as Q

    if array.ndim < 2 or want == "F32":
        return Q.F32
    if want == "Q8_0" and array.shape[-1] % 32 != 0:
        return Q.F16
    return Q[want]


def export_gguf(model, path: str | Path, *, out_type: str = "BF16", tokenizer_dir: str | Path | None = None,
                name: str | None = None, card=None) -> dict[str, Any]:
    """Write `model` (a transformers causal LM of a FAMILIES type) to the GGUF file `path`.

    `card` (a `gguf_metadata.CardFields`): the model is a pruned one; `general.*` then names it `<name>-pruned-<N>L`
    with its base, licence and tags (gguf_metadata.py). Without it only `general.name` and the size label are set."""
    from hf_layerprune import gguf_metadata

    import gguf
    import numpy as np
    import torch

    if out_type not in EXPORT_TYPES:
        raise LayerPruneError(f"unknown GGUF export type {out_type!r}; use one of {', '.join(EXPORT_TYPES)}")
    config = model.config
    check_exportable(config)
    arch = gguf.MODEL_ARCH[FAMILIES[config.model_type]]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(Path(path), gguf.MODEL_ARCH_NAMES[arch])
    # transformers 5 reads a llama-arch GGUF whose general.name contains "mistral" as model_type mistral, which its
    # own GGUF weight map then cannot place (gguf-py has no "mistral" arch): such files load in llama.cpp only
    _write_config(writer, config)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    has_tokenizer = _write_tokenizer(writer, Path(tokenizer_dir) if tokenizer_dir else None)
    n_kv = config.num_key_value_heads or config.num_attention_heads
    types: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise LayerPruneError(f"no GGUF name for {hf_name} in gguf's {arch.name} map")
        gguf_name = f"{gguf_name}.{suffix}"
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if config.model_type in PERMUTED and base.endswith("self_attn.q_proj"):
            array = permute(array, config.num_attention_heads)
        elif config.model_type in PERMUTED and base.endswith("self_attn.k_proj"):
            array = permute(array, n_kv)
        qtype = tensor_type(gguf_name, array, out_type)
        data = array if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(array, qtype)
        if qtype == gguf.GGMLQuantizationType.F16:
            data = array.astype(np.float16)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        types[gguf_name] = qtype.name
    shapes = [(n, tuple(info.shape)) for tensors in writer.tensors for n, info in tensors.items()]
    if card is not None:
        general = gguf_metadata.pruned_general({"general.name": name, "general.basename": name} if name else {}, shapes,
                                               config.num_hidden_layers, card)
    else:
        general = {"general.name": name or "model", "general.size_label": gguf_metadata.size_label(shapes)}
    gguf_metadata.write_to(writer, general)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": Path(path).name, "type": out_type, "architecture": arch.name.lower(), "tokenizer": has_tokenizer,
            "tensors": len(types), "general": general}
