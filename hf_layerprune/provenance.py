"""What a published output says about where it came from, without the maker's local paths.

A Hub source is named by its id and resolved commit. A local source is named by its folder or file name, and a
single file (a GGUF) also by its sha256 (``base_file_sha256``), which identifies it wherever a reader has a copy.
Every other absolute path in the report (the recipe's ``model`` and ``output_dir``, calibration and healing text
files, task and perplexity files, the command line) is replaced by its last component, so ``layerprune.json``,
the card and its recipe block never show a home directory, a temp folder or a site-packages path, and the recipe
runs anywhere after replacing only the model path.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path, PurePath
from typing import Any


def _is_local_path(text: str) -> bool:
    return os.path.isabs(text) or text.startswith(("~", "./", "../")) or (len(text) > 2 and text[1:3] in (":\\", ":/"))


def public_path(text: str) -> str:
    """An absolute or relative filesystem path -> its last component; anything else unchanged."""
    if not _is_local_path(text):
        return text
    return PurePath(text.replace("\\", "/").rstrip("/")).name or text


def _public_command(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    return shlex.join(public_path(word) if "=" not in word else word.split("=", 1)[0] + "=" +
                      public_path(word.split("=", 1)[1]) for word in words)


def scrub(value: Any, key: str = "") -> Any:
    """A copy of `value` (a report, or part of one) with every local path reduced to its name."""
    if isinstance(value, dict):
        return {k: scrub(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, key) for v in value]
    if isinstance(value, str):
        if key == "command":
            return _public_command(value)
        if os.sep in value or "/" in value or value.startswith("~"):
            return public_path(value) if _is_local_path(value) else value
    return value


def source_record(name: str, local_file: Path | None) -> dict[str, Any]:
    """`base_model` as published, and the sha256 of a single-file source (a GGUF)."""
    from hf_layerprune.checkpoint import sha256

    out: dict[str, Any] = {"base_model": public_path(str(name)) if _is_local_path(str(name)) or Path(str(name)).exists() else name}
    if local_file is not None and local_file.is_file():
        out["base_file_sha256"] = sha256(local_file)
    return out
