"""Where hf-layerprune keeps its caches (lm-eval results, rendered task YAMLs, source digests): ``$LAYERPRUNE_CACHE``,
else ``$XDG_CACHE_HOME/hf-layerprune`` or ``~/.cache/hf-layerprune``; and `file_identity`, what a result computed
from a file's bytes is keyed by. Its own module so that light code (provenance, gguf_surgery) finds them without
importing the evaluation stack."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("LAYERPRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hf-layerprune"
    )
    return Path(base)


FileIdentity = tuple[str, int, int, int, int]


def file_identity(path: str | os.PathLike) -> FileIdentity:
    """(real path, size, mtime_ns, ctime_ns, inode): every write to the file changes its ctime, which no tool can
    set back, so a result kept under this key was computed from the same bytes."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
