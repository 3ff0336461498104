"""GGUF outputs of a run (`--format gguf|both`), called from pipeline.py.

- A GGUF source is cut by `gguf_surgery.prune_gguf`: kept tensors' quantized bytes are copied. When healing
  changed weights, each changed tensor is re-quantized (`gguf.quants`) to its source type, or to the nearest
  type the `gguf` package can quantize to (`NEAREST`), and the report says which.
- A transformers source is exported with `gguf_export.export_gguf` (BF16 or Q8_0, `--gguf-type`).
- A GGUF source with nothing that needs the model in memory (explicit --layers or a config rule, --heal none,
  --no-eval, `--format gguf`) never dequantizes anything: `run_streaming`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from hf_layerprune.runtime.errors import ConfigError, UnsupportedModel
from hf_layerprune.runtime.formats import format_names, formats_of, wants
from hf_layerprune.surgery.gguf_metadata import CardFields

ADDS_TENSORS = ("bias",)  # healers that add tensors (down_proj biases) a GGUF surgery has no slot for
# Types gguf.quants can only dequantize -> the closest type it can quantize to (bits per weight at or above).
NEAREST = {
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q4_1", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ1_S": "Q4_0", "IQ1_M": "Q4_0",
    "IQ2_XXS": "Q4_0", "IQ2_XS": "Q4_0", "IQ2_S": "Q4_0", "IQ3_XXS": "Q4_0", "IQ3_S": "Q4_0", "IQ4_NL": "Q4_1",
    "IQ4_XS": "Q4_1", "MXFP4": "Q4_1", "NVFP4": "Q4_1",
}


def resolve_format(recipe, source) -> str:
    """Fill recipe.format (a GGUF source defaults to both) and refuse what cannot be written: each format's own
    check (formats.OUTPUT_FORMATS)."""
    fmt = recipe.format or ("both" if source.kind == "gguf" else "safetensors")
    format_names(fmt)
    if recipe.gguf_type is not None and recipe.gguf_type not in ("BF16", "Q8_0", "F32"):  # refused with any format
        raise ConfigError(f"unknown --gguf-type {recipe.gguf_type!r}; use BF16, Q8_0 or F32")
    recipe.format = fmt
    for entry in formats_of(recipe):
        entry.call("check", recipe, source)
    return fmt


def check_gguf_recipe(recipe, source) -> None:
    """What a GGUF output cannot hold, refused before any work."""
    if recipe.granularity != "block":
        if source.kind == "gguf":
            raise ConfigError("GGUF output of a .gguf source holds whole-layer cuts only; use --format "
                                  f"safetensors with --granularity {recipe.granularity}")
    if source.kind == "gguf" and recipe.heal not in (None, "none"):  # (healing imports torch)
        from hf_layerprune.healing import heal_names

        if any(name in ADDS_TENSORS for name in heal_names(recipe.heal)):
            raise ConfigError(f"--heal {recipe.heal} adds bias tensors the GGUF file has no slot for; "
                                  "use --format safetensors")


def check_sublayer_gguf(recipe, config) -> None:
    """Before any work: a sub-layer cut's GGUF is a llama.cpp `deci` file, whose graph is Llama's."""
    if recipe.granularity != "block" and wants_gguf(recipe) and config.model_type != "llama":
        raise UnsupportedModel(f"GGUF output of a --granularity {recipe.granularity} cut uses llama.cpp's deci "
                              f"architecture, which runs Llama blocks only, not {config.model_type}; use --format "
                              "safetensors")


def wants_gguf(recipe) -> bool:
    return wants(recipe, "gguf")


def source_file(source) -> Path:
    return Path(source.path) / source.gguf_file


def output_name(source, num_layers: int, suffix: str = "") -> str:
    from hf_layerprune.surgery.gguf_surgery import gguf_output_name
    from hf_layerprune.hub import _model_name

    if source.kind == "gguf":
        return gguf_output_name(source.gguf_file, num_layers)
    return f"{_model_name(source.name)}-pruned-{num_layers}L{suffix}.gguf"  # docs/gguf.md: <model>-pruned-<N>L.<TYPE>.gguf


def card_fields(report, recipe) -> CardFields:
    """The model card's base model, licence and tags for the GGUF's `general.*` keys (gguf_metadata.py), from the
    report as the run has filled it so far (the card itself is rendered after the weights are written); the base
    card is looked up here when the run has not yet (finish.look_up_base_card: once per run)."""
    import dataclasses

    from hf_layerprune.card.formatting import hub_id
    from hf_layerprune.card.metadata import card_data
    from hf_layerprune.flow.finish import look_up_base_card
    from hf_layerprune.report import GgufSection, RecipeSection

    try:
        look_up_base_card(report, model=recipe.model)
    except Exception:  # noqa: BLE001 - an unreadable card only means "licence unknown", as on the card itself
        report.base_card, report.base_card_looked_up = None, True
    report = dataclasses.replace(report, recipe=RecipeSection.from_dict(recipe.to_dict()))
    card = card_data(dataclasses.replace(report, gguf=report.gguf or GgufSection()), model_name="model")
    base = str(report.source.base_model or "model")
    rid = hub_id(base)
    return CardFields(base=rid or PurePosixPath(base.replace("\\", "/").rstrip("/")).name, hub=rid is not None,
                      license=getattr(card, "license", None), license_name=getattr(card, "license_name", None),
                      license_link=getattr(card, "license_link", None), tags=list(card.tags or []))


def write_gguf_output(model, tokenizer, recipe, folder: Path, *, source, removed: list[int], card=None) -> dict[str, Any]:
    """The gguf format's writer (formats.OUTPUT_FORMATS): `write_gguf` into the save stage's folder."""
    return write_gguf(model, Path(folder), recipe, source, removed, card=card)


def write_gguf(model, tmp: Path, recipe, source, removed: list[int], log=None, card=None) -> dict[str, Any]:
    """Write the GGUF output of an in-memory run into `tmp`; returns its report entry. `card`: card_fields.
    `log`: default the run's display, else stderr (stdout is `push`'s URL)."""
    log = log or _stderr_log()
    if source.kind != "gguf":
        from hf_layerprune.surgery.gguf_export import export_gguf
        from hf_layerprune.hub import _model_name

        out_type = recipe.gguf_type or "BF16"
        path = tmp / output_name(source, model.config.num_hidden_layers, f".{out_type}")
        log(f"Exporting {path.name} ({out_type})")
        info = export_gguf(model, path, out_type=out_type, tokenizer_dir=tokenizer_folder(tmp),
                           name=_model_name(source.name), card=card)
        return {"route": "export", **_checked_tokenizer(info, log)}
    path = tmp / output_name(source, model.config.num_hidden_layers)
    replace, requantized = ({}, {}) if recipe.heal == "none" else changed_tensors(model, source, removed)
    log(f"Writing {path.name} from {source.gguf_file} ({len(replace)} re-quantized tensors)")
    from hf_layerprune.surgery.gguf_surgery import prune_gguf

    info = prune_gguf(source_file(source), path, removed, replace=replace, card=card)
    info.pop("replaced_tensors")
    return {"route": "surgery", **info, "requantized": requantized}


def write_deci_gguf(folder: Path, recipe, source, num_blocks: int, card=None, log=None) -> dict[str, Any]:
    """The `deci` GGUF of a sub-layer (DeciLM) output in `folder` (gguf_export.export_deci_gguf); with `--format
    gguf` the DeciLM safetensors, config and code are removed afterwards."""
    from hf_layerprune.surgery.gguf_export import export_deci_gguf
    from hf_layerprune.hub import _model_name

    out_type, log = recipe.gguf_type or "BF16", log or _stderr_log()
    path = folder / output_name(source, num_blocks, f".{out_type}")
    log(f"Exporting {path.name} ({out_type}, llama.cpp's deci architecture)")
    info = _checked_tokenizer(export_deci_gguf(folder, path, out_type=out_type, name=_model_name(source.name), card=card,
                                               tokenizer_dir=tokenizer_folder(folder)), log)
    if recipe.format == "gguf":
        for leftover in [*folder.glob("*.safetensors"), *folder.glob("*.py"), folder / "config.json",
                         folder / "model.safetensors.index.json"]:
            leftover.unlink(missing_ok=True)
    return {"route": "export", **info}


def llama_cpp_gguf_speed(gguf, settings, source, folder: Path, base, log) -> dict[str, Any]:
    """Prompt and generation tokens/s of the GGUF output `gguf` (a GgufSection, in `folder`) and of its base in
    llama.cpp (evaluation/llama_cpp_speed.py), with the evaluation `settings`' lengths and rounds. The base is the
    source file for a GGUF `source`; else the unpruned model `base` (a SharedBase view or a model; None: loaded from
    `source`) exported in the output's type to a temporary file, removed after. An error is a warning and a
    `skipped` record: the run's outputs stand without this measurement."""
    import tempfile

    from hf_layerprune.evaluation.llama_cpp_speed import measure_gguf_pair

    pruned = Path(folder) / gguf.file
    try:
        with tempfile.TemporaryDirectory(dir=Path(folder).parent, prefix=".layerprune-base-gguf-") as scratch:
            base_file = source_file(source) if source.kind == "gguf" else _base_gguf(gguf, source, folder, base,
                                                                                    Path(scratch), log)
            log(f"Speed in llama.cpp: base and pruned GGUF interleaved, prompt {settings.prompt_len} tokens, "
                f"{settings.decode_tokens} generated")
            return measure_gguf_pair(base_file, pruned, prompt_len=settings.prompt_len,
                                     decode_tokens=settings.decode_tokens, warmup=settings.speed_warmup,
                                     repeats=settings.speed_repeats, threads=settings.speed_threads)
    except Exception as exc:  # an extra measurement: the run's outputs stand without it
        reason = f"{type(exc).__name__}: {exc}".replace(str(Path(folder).parent), "…")
        log(f"Warning: the GGUF's speed in llama.cpp was not measured ({reason})")
        return {"skipped": reason}


def _base_gguf(gguf, source, folder: Path, base, scratch: Path, log) -> Path:
    """The unpruned model written as a GGUF of the output's type (with the output's tokenizer) in `scratch`."""
    from hf_layerprune.hub import _model_name
    from hf_layerprune.surgery.base_view import as_base
    from hf_layerprune.surgery.gguf_export import export_gguf

    if base is None:
        from hf_layerprune.surgery.loading import load_model

        log(f"Loading the base model {source.name} to export it as GGUF")
        base = load_model(source, need_tokenizer=False)[0]
    path = scratch / f"base.{gguf.type}.gguf"
    log(f"Exporting the base model as {gguf.type} GGUF to time it in llama.cpp")
    with as_base(base) as model:
        export_gguf(model, path, out_type=gguf.type, tokenizer_dir=tokenizer_folder(folder),
                    name=_model_name(source.name))
    return path


def tokenizer_folder(folder: Path) -> Path | None:
    """`folder` when it holds a `tokenizer.json` (the GGUF exports write it into the file), else None."""
    return folder if (Path(folder) / "tokenizer.json").exists() else None


def _checked_tokenizer(info: dict[str, Any], log) -> dict[str, Any]:
    """An exported GGUF's report entry, after warning when llama.cpp would not know its pre-tokenizer."""
    if info.get("tokenizer") and info.get("tokenizer_pre") is None:
        log("Warning: llama.cpp does not know this tokenizer's pre-tokenizer (its own converter would refuse it); "
            "the GGUF says 'default', so llama.cpp may split text into other tokens than transformers does")
    return info


def _stderr_log():
    """The run's display when one is active, else stderr (stdout is `push`'s URL)."""
    import sys

    from hf_layerprune.runtime import progress

    return progress.message if progress.active() else lambda text: print(text, file=sys.stderr)


def changed_tensors(model, source, removed: list[int]) -> tuple[dict, dict]:
    """Tensors of the healed model that differ from the source GGUF's (dequantized), re-quantized.

    Returns ({output tensor name: (bytes array, type)}, {name: {"from": source type, "to": written type}})."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf import quants
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    from hf_layerprune.surgery.gguf_export import permute
    from hf_layerprune.surgery.gguf_surgery import kept_blocks, read_header, renamed

    header = read_header(source_file(source))
    arch = header.architecture
    config = model.config
    kept = kept_blocks(removed, header.block_count)
    new_index = {old: new for new, old in enumerate(kept)}
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config.to_dict())
    to_hf = get_gguf_hf_weights_map(model, processor)
    state = model.state_dict()
    out_names = {}
    for t in header.tensors:
        name = renamed(t.name, new_index)
        if name is not None:
            out_names[name] = t
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    slotless = (set(state) - set(to_hf.values()) - tied) | {hf for g, hf in to_hf.items() if g not in out_names and hf in state
                                                             and hf not in tied}
    added = sorted(hf for hf in slotless if bool(state[hf].any()))  # all-zero additions (unused biases) change nothing
    if added:
        raise ConfigError(f"healing added {added[0]}, which the GGUF file has no tensor for; "
                              "use --format safetensors")
    replace, requantized = {}, {}
    for name, t in out_names.items():
        hf_name = to_hf.get(name)
        if hf_name is None or hf_name not in state:
            continue  # tensors transformers does not load (rope_freqs ...) are copied as they were
        new = state[hf_name].detach().to(torch.float32).cpu().numpy()
        if arch == "llama":  # transformers' LlamaTensorProcessor un-permutes Q/K of llama-arch files
            if ".attn_q." in name:
                new = permute(new, config.num_attention_heads)
            elif ".attn_k." in name:
                new = permute(new, config.num_key_value_heads)
        src_type = Q(t.ggml_type)
        old = quants.dequantize(_tensor_bytes(header, t), src_type).reshape(new.shape)
        if np.array_equal(old, new):
            continue
        qtype = _writable_type(src_type, new)
        data = new if qtype == Q.F32 else new.astype(np.float16) if qtype == Q.F16 else quants.quantize(new, qtype)
        replace[name] = (data, qtype)
        requantized[name] = {"from": src_type.name, "to": qtype.name}
    header.buf.close()
    return replace, requantized


def _tensor_bytes(header, t):
    import numpy as np

    start = header.data_start + t.offset
    return np.frombuffer(header.buf, dtype=np.uint8, count=t.n_bytes, offset=start).copy()


def _writable_type(src_type, array):
    """The source type when gguf.quants can quantize to it (rows permitting), else the nearest one it can."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if src_type in (Q.F32, Q.F16):
        return src_type
    candidates = [src_type.name, NEAREST.get(src_type.name, "Q8_0"), "Q8_0", "F16"]
    for name in candidates:
        qtype = Q[name]
        block = GGML_QUANT_SIZES[qtype][0]
        if array.shape[-1] % block:
            continue
        try:  # a one-block probe: NotImplementedError for dequantize-only types
            quants.quantize(np.zeros((1, block), dtype=np.float32), qtype) if qtype != Q.F16 else None
        except NotImplementedError:
            continue
        return qtype
    return Q.F16


def elements(t) -> int:
    import math

    return math.prod(t.dims)
