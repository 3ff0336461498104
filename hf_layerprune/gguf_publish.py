"""Verify the GGUF files of a push by reading them back from the Hub.

`publish_folder` uploads every file of the output folder, so a `.gguf` file travels with the safetensors (or
alone, for `--format gguf`). After the commit, each GGUF file is downloaded from the pushed revision into a
throw-away cache: its SHA-256 must equal the local file's, and its header must parse with the block count and
tensor count the local file has. A GGUF-only folder has no config.json: the transformers reload is skipped.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from hf_layerprune.errors import LayerPruneError


def gguf_files(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).glob("*.gguf"))


def is_gguf_folder(directory: Path) -> bool:
    """A `--format gguf` output: GGUF file(s), no safetensors."""
    return bool(gguf_files(directory)) and not any(Path(directory).glob("*.safetensors"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_pushed_gguf(repo_id: str, revision: str, directory: Path, token: str | None) -> list[dict[str, Any]]:
    from huggingface_hub import hf_hub_download

    from hf_layerprune.gguf_surgery import read_header
    from hf_layerprune.hub_calls import hub_errors

    checks = []
    for name in gguf_files(directory):
        local = Path(directory) / name
        with tempfile.TemporaryDirectory(prefix="layerprune-verify-gguf-") as cache:
            with hub_errors(f"downloading {name} from {repo_id}@{revision} to verify it", token):
                pushed = Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache, token=token))
            if _sha256(pushed) != _sha256(local):
                raise LayerPruneError(f"{repo_id}@{revision}: {name} differs from the local file after the push")
            mine, theirs = read_header(local), read_header(pushed)
            try:
                if (theirs.block_count, len(theirs.tensors)) != (mine.block_count, len(mine.tensors)):
                    raise LayerPruneError(f"{repo_id}@{revision}: {name} does not read back as written")
                checks.append({"file": name, "sha256": _sha256(local), "block_count": theirs.block_count,
                               "tensors": len(theirs.tensors)})
            finally:
                mine.buf.close()
                theirs.buf.close()
    return checks
