"""Byte-range copies between files for the on-disk cuts (safetensors shards, GGUF files): in the kernel
(``os.copy_file_range``: no pass through Python's memory) where the platform and file systems allow, else by
chunks. Both cuts write their headers first and then append each kept tensor's bytes, so the output offset is the
output file's position."""

from __future__ import annotations

import os

from hf_layerprune.errors import LayerPruneError

CHUNK_BYTES = 16 * 2**20


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_range(src: int, out: int, start: int, nbytes: int, *, what: str = "the source file",
               chunk: int = CHUNK_BYTES) -> None:
    """Append bytes [start, start+nbytes) of file descriptor `src` to `out` (at its position)."""
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < nbytes:
                n = os.copy_file_range(src, out, nbytes - copied, start + copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            pass  # e.g. across file systems on an old kernel; finish with plain reads below
    while copied < nbytes:
        data = os.pread(src, min(chunk, nbytes - copied), start + copied)
        if not data:
            raise LayerPruneError(f"{what} is truncated at byte {start + copied} (an incomplete download?)")
        write_all(out, data)
        copied += len(data)
