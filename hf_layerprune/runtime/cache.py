"""Where hf-layerprune keeps its caches (lm-eval results, rendered task YAMLs, source digests, GGUF header scans):
``$LAYERPRUNE_CACHE``, else ``$XDG_CACHE_HOME/hf-layerprune`` or ``~/.cache/hf-layerprune``; `file_identity`, what a
result computed from a file's bytes is keyed by, and `FileResults`, such results kept across runs. Its own module so
that light code (provenance, gguf_surgery) finds them without importing the evaluation stack."""

from __future__ import annotations

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
    run, and for files of `persist_from` bytes or more also in `<cache folder>/<name>.json` (real path -> [size,
    mtime_ns, ctime_ns, inode, result]), so that the next run on the same bytes (a sweep, another --layers) reads
    them instead of the file. A result comes back only while the file's identity is the one it was computed under;
    an unreadable or unwritable cache file only means computing again. Values are JSON."""

    def __init__(self, name: str, persist_from: int = 2**20):
        self.name, self.persist_from = name, persist_from
        self._lock = threading.Lock()  # several threads keep results at once (the provenance hash)
        self.forget()

    def forget(self) -> None:
        """What a new process starts with: nothing in memory, the cache file read again when first needed."""
        self._memory: dict[FileIdentity, Any] = {}
        self._stored: dict[str, list] | None = None

    def _path(self) -> Path:
        return cache_root() / f"{self.name}.json"

    def _store(self) -> dict[str, list]:
        if self._stored is None:
            try:
                data = json.loads(self._path().read_text(encoding="utf-8"))
                self._stored = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._stored = {}
        return self._stored

    def get(self, key: FileIdentity) -> Any | None:
        if key in self._memory:
            return self._memory[key]
        entry = self._store().get(key[0])
        if isinstance(entry, list) and len(entry) == 5 and tuple(entry[:4]) == key[1:]:
            self._memory[key] = entry[4]
            return entry[4]
        return None

    def put(self, key: FileIdentity, value: Any) -> None:
        self._memory[key] = value
        if key[1] < self.persist_from:
            return
        with self._lock:
            store = self._store()
            store[key[0]] = [*key[1:], value]
            path = self._path()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(json.dumps(store, separators=(",", ":")), encoding="utf-8")
                os.replace(tmp, path)
            except OSError:
                pass
