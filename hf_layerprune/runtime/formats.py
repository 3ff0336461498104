"""Output formats: one registry entry per format (`--format NAME`; `both` is safetensors and GGUF).

An entry carries everything the run, the upload and the card need to know about its format, so that adding one
is one entry plus its own module (tests/toy_format.py does it):

- ``writer``: ``"module:function"``, called by the save stage as ``write(model, tokenizer, recipe, folder, *,
  source, removed, card)`` after the tokenizer and side files are in `folder`; returns the format's section of
  ``layerprune.json`` (under the key ``record``) or None;
- ``files``: glob patterns of what it writes (the first one marks a folder as holding the format);
- ``verifier``: ``"module:function"``, ``verify(folder)`` raises a one-line `CheckpointError` when the written
  files are not whole (``upload`` runs it before publishing, and the save stage after writing);
- ``usage``: ``"module:function"``, ``usage(record, load_id) -> str | None``: the card's how-to-load block for
  the format, from its record in the report (None: the card's built-in section, safetensors and GGUF);
- ``check``: ``"module:function"``, ``check(recipe, source)``: refusals before any work (`plan.make_plan`);
- ``capabilities``: ``streamable`` (an on-disk cut writes it with no model in memory), ``4bit`` (the
  ``--load-in-4bit`` route writes it, from the source's shards);
- ``tags``: model-card tags.

Entries name their functions by module path so that reading this registry (checks, `--help`) imports nothing
heavy: the writer's module is imported when the save stage calls it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.runtime.registry import Registry

BOTH = ("safetensors", "gguf")  # what `--format both` writes


@dataclass(frozen=True)
class OutputFormat:
    name: str
    summary: str
    writer: str
    files: tuple[str, ...]
    verifier: str | None = None
    usage: str | None = None
    check: str | None = None
    record: str | None = None  # key of its section in layerprune.json
    capabilities: frozenset[str] = frozenset()
    tags: tuple[str, ...] = ()

    def call(self, role: str, *args: Any, **kwargs: Any) -> Any:
        """Call the entry's `role` function ("writer", "verifier", "usage", "check"); None when it has none."""
        target = getattr(self, role)
        if target is None:
            return None
        module, _, function = target.partition(":")
        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    def present(self, folder: str | Path) -> bool:
        """Whether `folder` holds this format's files."""
        return any(Path(folder).glob(self.files[0]))


OUTPUT_FORMATS: Registry[OutputFormat] = Registry("output format", "--format", extra=("both",))
register = OUTPUT_FORMATS.register

register(OutputFormat(
    "safetensors", "sharded safetensors and config.json: transformers' from_pretrained loads it",
    writer="hf_layerprune.flow.stages:write_safetensors", files=("*.safetensors", "config.json"),
    verifier="hf_layerprune.surgery.checkpoint:check_saved", capabilities=frozenset({"streamable", "4bit"})))
register(OutputFormat(
    "gguf", "one GGUF file (llama.cpp, Ollama, LM Studio): a GGUF source's blocks cut as they are, a transformers "
    "model exported (BF16, Q8_0)", writer="hf_layerprune.flow.gguf_route:write_gguf_output", files=("*.gguf",),
    verifier="hf_layerprune.flow.gguf_publish:check_gguf_files", check="hf_layerprune.flow.gguf_route:check_gguf_recipe",
    record="gguf", tags=("gguf",)))


def format_names(fmt: str | None) -> tuple[str, ...]:
    """The formats a `--format` value writes (None: safetensors), each checked against the registry."""
    names = BOTH if fmt == "both" else ("safetensors",) if fmt is None else (fmt,)
    for name in names:
        if name not in OUTPUT_FORMATS:
            raise ConfigError(f"unknown --format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS.choices())}")
    return names


def formats_of(recipe) -> list[OutputFormat]:
    return [OUTPUT_FORMATS[name] for name in format_names(recipe.format)]


def wants(recipe, name: str) -> bool:
    """Whether the recipe writes format `name`."""
    return name in format_names(recipe.format)


def written_formats(folder: str | Path) -> list[OutputFormat]:
    """The formats whose files `folder` holds, in registry order."""
    return [entry for entry in OUTPUT_FORMATS.values() if entry.present(folder)]
