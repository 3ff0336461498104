"""Where hf-layerprune keeps its caches (lm-eval results, rendered task YAMLs, source digests, GGUF header scans):
``$LAYERPRUNE_CACHE``, else ``$XDG_CACHE_HOME/hf-layerprune`` or ``~/.cache/hf-layerprune``; `file_identity`, what a
result computed from a file's bytes is keyed by, and `FileResults`, such results kept across runs. Its own module so
that light code (provenance, gguf_surgery) finds them without importing the evaluation stack."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


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


class FileResults:
    """Results computed from a file's bytes (its sha256, its GGUF header scan), by `file_identity`: in memory for the
    run, and for files of `persist_from` bytes or more also in the cache folder, one small file per source file
    (`<cache>/<name>/<sha256 of its real path>.json`: [real path, size, mtime_ns, ctime_ns, inode, result]), so that
    the next run on the same bytes (a sweep, another --layers) reads one entry instead of the file, however many files
    were cut before. A result comes back only while the file's identity is the one it was computed under; an
    unreadable or unwritable cache only means computing again. Values are JSON."""

    def __init__(self, name: str, persist_from: int = 2**20):
        self.name, self.persist_from = name, persist_from
        self.forget()

    def forget(self) -> None:
        """What a new process starts with: nothing in memory (the cache folder is read again when needed)."""
        self._memory: dict[FileIdentity, Any] = {}

    def _path(self, real_path: str) -> Path:
        digest = hashlib.sha256(real_path.encode("utf-8", "surrogateescape")).hexdigest()
        return cache_root() / self.name / f"{digest}.json"

    def get(self, key: FileIdentity) -> Any | None:
        if key in self._memory:
            return self._memory[key]
        if key[1] < self.persist_from:
            return None
        try:
            entry = json.loads(self._path(key[0]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(entry, list) and len(entry) == 6 and tuple(entry[:5]) == key:
            self._memory[key] = entry[5]
            return entry[5]
        return None

    def put(self, key: FileIdentity, value: Any) -> None:
        self._memory[key] = value
        if key[1] < self.persist_from:
            return
        path = self._path(key[0])
        try:  # one file per source file, replaced whole: threads and processes never write the same entry halfway
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps([*key, value], separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass
