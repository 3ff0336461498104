"""The `general.*` metadata of a GGUF output: what the file says it is.

llama.cpp's converter fills these keys from the model card's front matter and the parameter count; a cut file
copied from its source would still say it is the base model (llama.cpp#27976's stale-metadata class of bug).
Every GGUF we write (surgery or export) gets:

- `general.size_label` recomputed from its own tensors (`gguf.utility.size_label`, experts counted as llama.cpp
  does: `8x7B` style for MoE files);
- `general.name` and `general.finetune` ending in `-pruned-<N>L` (`finetune` is `pruned-<N>L` when the source had
  none); `general.basename` is kept (an export: the model's name);
- `general.base_model.count = 1`, `.0.name` (the Hub repo's name when the base is a Hub id, else its file or
  folder name), `.0.organization` and `.0.repo_url` (`https://huggingface.co/<id>`) when the base is a Hub id;
  any `general.base_model.*` of the source (the source's own base) is dropped;
- `general.license` (`.name`, `.link`) and `general.tags` as on the model card (card.metadata.card_data); the
  source's licence stays when the card knows none.

What the card says comes in as `CardFields`; gguf_route.card_fields reads them from the card (this module knows no
card).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

BASE_MODEL_PREFIX = "general.base_model."
HUB = "https://huggingface.co"
PRUNED_SUFFIX = re.compile(r"-pruned-\d+L$")  # a file cut again says its new depth once


@dataclass
class CardFields:
    """What the model card says about the output: its base (a Hub id, or a file/folder name), licence and tags."""

    base: str
    hub: bool = False
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    tags: list[str] = field(default_factory=list)


def parameter_counts(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, expert count) of tensors given as (GGUF name, numpy-order shape), as
    gguf's GGUFWriter.get_total_parameter_count counts them."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in shapes:
        size = math.prod(shape)
        if "_exps." in name and len(shape) >= 3:
            count = shape[-2 if ".bias" in name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    count = expert_sum // n_expert_tensors if n_expert_tensors else 0
    return total, shared, expert, count


def size_label(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> str:
    from gguf.utility import size_label as gguf_size_label

    return gguf_size_label(*parameter_counts(shapes))


def pruned_general(source: dict[str, Any], shapes: list[tuple[str, tuple[int, ...]]], num_layers: int,
                   card: CardFields) -> dict[str, Any]:
    """The `general.*` keys to write (in this order), from the source file's `general.*` values (empty for an export)."""
    suffix = f"pruned-{num_layers}L"
    name = source.get("general.name") or (card.base.split("/")[-1] if card.hub else _stem(card.base))
    finetune = PRUNED_SUFFIX.sub("", "-" + (source.get("general.finetune") or ""))[1:]
    out: dict[str, Any] = {
        "general.name": f"{PRUNED_SUFFIX.sub('', name)}-{suffix}",
        "general.finetune": f"{finetune}-{suffix}" if finetune else suffix,
        "general.size_label": size_label(shapes),
    }
    if source.get("general.basename"):
        out["general.basename"] = source["general.basename"]
    for key, value in (("general.license", card.license), ("general.license.name", card.license_name),
                       ("general.license.link", card.license_link)):
        if value:
            out[key] = str(value)
    if card.tags:
        out["general.tags"] = list(card.tags)
    out["general.base_model.count"] = 1
    out["general.base_model.0.name"] = card.base.split("/")[-1] if card.hub else card.base
    if card.hub:
        if "/" in card.base:
            out["general.base_model.0.organization"] = card.base.split("/")[0]
        out["general.base_model.0.repo_url"] = f"{HUB}/{card.base}"
    return out


def _stem(name: str) -> str:
    for ext in (".gguf", ".safetensors"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def replaced(key: str, general: dict[str, Any]) -> bool:
    """Whether a source entry is superseded: written anew from `general`, or the source's own base model."""
    return key in general or key.startswith(BASE_MODEL_PREFIX)


def write_to(writer, general: dict[str, Any]) -> None:
    """Add the keys to a gguf.GGUFWriter (strings, u32 counts, string arrays)."""
    for key, value in general.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
