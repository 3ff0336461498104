"""Export a transformers model of a stock family to GGUF (F32, BF16 or Q8_0), with llama.cpp's names.

Tensor names come from the `gguf` package's own map (`gguf.get_tensor_name_map(MODEL_ARCH.X, n_blocks)`, the
table llama.cpp's convert_hf_to_gguf.py uses) and metadata keys from its `GGUFWriter.add_*` helpers. As in
convert_hf_to_gguf.py, llama/mistral Q and K rows are permuted to llama.cpp's rotary layout (transformers'
GGUF loader undoes it), 1-D tensors (norms, biases) stay F32 and Q8_0 falls back to F16 for rows that are not
a multiple of 32. The tokenizer is written when the model directory has a BPE `tokenizer.json` (gguf.vocab), with
the pre-tokenizer name llama.cpp's converter would give it (pre_tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_layerprune.architectures import ARCHITECTURES
from hf_layerprune.runtime.errors import ConfigError, UnsupportedModel

EXPORT_TYPES = ("F32", "BF16", "Q8_0")
# transformers model_type -> gguf MODEL_ARCH member name, and the families whose Q/K are permuted as
# convert_hf_to_gguf.py's LlamaModel.permute does: facts of each family's Architecture entry (architectures/)
FAMILIES = {a.model_type: a.gguf_arch for a in ARCHITECTURES.values() if a.gguf_arch}
PERMUTED = tuple(a.model_type for a in ARCHITECTURES.values() if a.gguf_permuted)


def check_exportable(config) -> None:
    if config.model_type not in FAMILIES:
        raise UnsupportedModel(
            f"GGUF export supports {', '.join(FAMILIES)}, not {config.model_type}; use --format safetensors"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModel(f"GGUF export of RoPE type {rope['rope_type']!r} is not supported; use --format safetensors")


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


def _write_tokenizer(writer, directory: Path | None) -> dict[str, Any]:
    """Write the BPE tokenizer of `directory` (tokenizer.json); returns the report's keys: `tokenizer` (written or
    not) and `tokenizer_pre` (what `tokenizer.ggml.pre` says, None where pre_tokenizer did not recognise it)."""
    if directory is None or not (Path(directory) / "tokenizer.json").exists():
        return {"tokenizer": False}
    import json

    from gguf import SpecialVocab

    model = json.loads((Path(directory) / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        return {"tokenizer": False}  # sentencepiece-style vocabularies need llama.cpp's own converter
    from gguf.vocab import BpeVocab

    vocab = BpeVocab(Path(directory))
    tokens, _, types = zip(*vocab.all_tokens())
    pre = pre_tokenizer(directory)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or UNKNOWN_PRE)
    writer.add_token_list(list(tokens))
    writer.add_token_types([int(t) for t in types])
    SpecialVocab(Path(directory), load_merges=True).add_to_gguf(writer)
    return {"tokenizer": True, "tokenizer_pre": pre}


UNKNOWN_PRE = "default"


def pre_tokenizer(directory: str | Path) -> str | None:
    """llama.cpp's name for the BPE pre-tokenizer of the transformers tokenizer in `directory`, recognised as its
    converter does: the SHA-256 of the token ids of a fixed text (gguf_pre_tokenizers.json). llama.cpp splits text
    with the regexes of that name, so a wrong one gives other tokens than transformers (SmolLM2 is "smollm"; under
    "default" its text starts with other tokens). None when not recognised (the file then says UNKNOWN_PRE, as
    files made before llama.cpp knew a tokenizer do, and the route warns)."""
    import hashlib
    import json

    from transformers import AutoTokenizer

    table = json.loads((Path(__file__).with_name("gguf_pre_tokenizers.json")).read_text(encoding="utf-8"))
    try:
        ids = AutoTokenizer.from_pretrained(directory).encode(table["chktxt"])
    except Exception:  # a tokenizer transformers cannot load by itself (code of its own, a broken config): unknown
        return None
    return table["pre"].get(hashlib.sha256(str(ids).encode()).hexdigest())


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
    import gguf

    check_type(out_type)
    config = model.config
    check_exportable(config)
    arch = gguf.MODEL_ARCH[FAMILIES[config.model_type]]
    writer = gguf.GGUFWriter(Path(path), gguf.MODEL_ARCH_NAMES[arch])
    # transformers 5 reads a llama-arch GGUF whose general.name contains "mistral" as model_type mistral, which its
    # own GGUF weight map then cannot place (gguf-py has no "mistral" arch): such files load in llama.cpp only
    _write_config(writer, config)
    n_kv = config.num_key_value_heads or config.num_attention_heads

    def heads(hf_name: str) -> int | None:  # convert_hf_to_gguf.py permutes llama/mistral Q and K rows
        if config.model_type not in PERMUTED:
            return None
        return config.num_attention_heads if ".q_proj." in hf_name else n_kv if ".k_proj." in hf_name else None

    tensors = ((k, v) for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and config.tie_word_embeddings))
    return _write(writer, arch, config.num_hidden_layers, tensors, heads, path=path, out_type=out_type,
                  tokenizer_dir=tokenizer_dir, name=name, card=card)


def check_type(out_type: str) -> None:
    if out_type not in EXPORT_TYPES:
        raise ConfigError(f"unknown GGUF export type {out_type!r}; use one of {', '.join(EXPORT_TYPES)}")


def _write(writer, arch, num_blocks: int, tensors, heads, *, path, out_type: str, tokenizer_dir, name, card) -> dict:
    """The common part of both exports: file type, tokenizer, tensors (Q/K rows permuted for `heads(name)` heads,
    1-D tensors F32), `general.*`, then the file."""
    import gguf
    import numpy as np
    import torch

    from hf_layerprune.surgery import gguf_metadata

    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer = _write_tokenizer(writer, Path(tokenizer_dir) if tokenizer_dir else None)
    names = gguf.get_tensor_name_map(arch, num_blocks)
    types: dict[str, str] = {}
    for hf_name, tensor in tensors:
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise UnsupportedModel(f"no GGUF name for {hf_name} in gguf's {arch.name} map")
        gguf_name = f"{gguf_name}.{suffix}"
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if heads(hf_name):
            array = permute(array, heads(hf_name))
        qtype = tensor_type(gguf_name, array, out_type)
        data = array if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(array, qtype)
        if qtype == gguf.GGMLQuantizationType.F16:
            data = array.astype(np.float16)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        types[gguf_name] = qtype.name
    shapes = [(n, tuple(info.shape)) for tensors in writer.tensors for n, info in tensors.items()]
    if card is not None:
        general = gguf_metadata.pruned_general({"general.name": name, "general.basename": name} if name else {}, shapes,
                                               num_blocks, card)
    else:
        general = {"general.name": name or "model", "general.size_label": gguf_metadata.size_label(shapes)}
    gguf_metadata.write_to(writer, general)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": Path(path).name, "type": out_type, "architecture": arch.name.lower(), **tokenizer,
            "tensors": len(types), "general": general}


# --- sub-layer cuts: llama.cpp's `deci` architecture ---------------------------------------------------------------
# llama.cpp's deci graph ends a block whose feed-forward length is 0 *before* adding its attention output to the
# residual stream (src/models/deci.cpp: `if (n_ff == 0) continue;`), so an MLP-removed block that keeps attention
# is written as an FFN of width 1 with zero weights: it adds exactly 0, and the attention is added as it should be.
MLP_STANDIN_WIDTH = 1


def mlp_standin(block: int, hidden: int):
    """The tensors of block `block`'s zero FFN of width MLP_STANDIN_WIDTH (transformers names, as the export reads
    them): silu(0) * 0 projected by zeros is exactly 0 in every GGUF type written here."""
    import torch

    width, prefix = MLP_STANDIN_WIDTH, f"model.layers.{block}"
    yield f"{prefix}.post_attention_layernorm.weight", torch.ones(hidden)
    yield f"{prefix}.mlp.gate_proj.weight", torch.zeros(width, hidden)
    yield f"{prefix}.mlp.up_proj.weight", torch.zeros(width, hidden)
    yield f"{prefix}.mlp.down_proj.weight", torch.zeros(hidden, width)


def check_deci_exportable(config: dict) -> None:
    """What llama.cpp's deci loader and graph run as the DeciLM export computes it (docs/gguf.md, "Sub-layer cuts")."""
    if config.get("qkv_bias") or config.get("attention_bias") or config.get("mlp_bias"):
        raise UnsupportedModel("GGUF (deci) export of biased projections (Qwen2's q/k/v bias) is not supported; "
                              "use --format safetensors")
    if "sliding_attention" in (config.get("layer_types") or []):
        raise UnsupportedModel("llama.cpp's deci graph has no sliding-window attention; use --format safetensors")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModel(f"GGUF export of RoPE type {rope['rope_type']!r} is not supported; use --format safetensors")
    if config.get("hidden_act") != "silu":
        raise UnsupportedModel("llama.cpp's deci graph runs SiLU MLPs only; use --format safetensors")


def export_deci_gguf(directory: str | Path, path: str | Path, *, out_type: str = "BF16",
                     tokenizer_dir: str | Path | None = None, name: str | None = None, card=None) -> dict[str, Any]:
    """Write the DeciLM (Nemotron-NAS) checkpoint in `directory` (our sub-layer export of a Llama) as a `deci` GGUF.

    As convert_hf_to_gguf.py's DeciModel: per-block `deci.attention.head_count` (0 where attention was removed),
    `head_count_kv` (0 there too: llama.cpp then allocates no attention tensor and no KV cache for the block) and
    `feed_forward_length` (MLP_STANDIN_WIDTH where only the MLP was removed: see mlp_standin); Q/K rows permuted
    per block. Weights are read one tensor at a time from the shards."""
    import json

    import gguf
    from safetensors import safe_open

    check_type(out_type)
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    check_deci_exportable(config)
    blocks, heads_all, hidden = config["block_configs"], config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads_all
    n_head = [0 if b["attention"]["no_op"] else heads_all for b in blocks]
    n_kv = [0 if b["attention"]["no_op"] else heads_all // b["attention"]["n_heads_in_group"] for b in blocks]
    shards = sorted(directory.glob("*.safetensors"))
    where = {}
    for shard in shards:
        with safe_open(shard, "pt") as f:
            where.update({key: shard for key in f.keys()})
    n_ff, standins = [], []
    for i, block in enumerate(blocks):
        if block["ffn"]["no_op"]:  # 0 only where attention goes too: deci.cpp then passes the block's input on
            standins += [] if block["attention"]["no_op"] else [i]
            n_ff.append(0 if block["attention"]["no_op"] else MLP_STANDIN_WIDTH)
            continue
        gate = f"model.layers.{i}.mlp.gate_proj.weight"
        with safe_open(where[gate], "pt") as f:
            n_ff.append(f.get_slice(gate).get_shape()[0])
    arch = gguf.MODEL_ARCH.DECI
    writer = gguf.GGUFWriter(Path(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(len(blocks))
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta"))
    if theta is not None:
        writer.add_rope_freq_base(float(theta))

    def heads(hf_name: str) -> int | None:
        parts = hf_name.split(".")
        if ".q_proj." in hf_name:
            return n_head[int(parts[2])]
        return n_kv[int(parts[2])] if ".k_proj." in hf_name else None

    def tensors():
        for key, shard in where.items():
            if key == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue
            with safe_open(shard, "pt") as f:
                yield key, f.get_tensor(key)
        for block in standins:
            yield from mlp_standin(block, hidden)

    info = _write(writer, arch, len(blocks), tensors(), heads, path=path, out_type=out_type,
                  tokenizer_dir=tokenizer_dir, name=name, card=card)
    return {**info, "head_count": n_head, "head_count_kv": n_kv, "feed_forward_length": n_ff}
