"""Byte-range copies between files for the on-disk cuts (safetensors shards, GGUF files): in the kernel
(``os.copy_file_range``: no pass through Python's memory) where the platform and file systems allow, else by
chunks. The GGUF cut appends each kept tensor at the output's position; the safetensors cut writes each tensor at
its planned offset, in source order."""

from __future__ import annotations

import os

from hf_layerprune.runtime.errors import CheckpointError

CHUNK_BYTES = 16 * 2**20


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_range(src: int, out: int, start: int, nbytes: int, *, out_offset: int | None = None,
               what: str = "the source file", chunk: int = CHUNK_BYTES) -> None:
    """Copy bytes [start, start+nbytes) of file descriptor `src` to `out`: at `out_offset`, or appended at the
    position of `out`."""
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < nbytes:
                at = None if out_offset is None else out_offset + copied
                n = os.copy_file_range(src, out, nbytes - copied, start + copied, at)
                if n == 0:
                    break
                copied += n
        except OSError:
            pass  # e.g. across file systems on an old kernel; finish with plain reads below
    while copied < nbytes:
        data = os.pread(src, min(chunk, nbytes - copied), start + copied)
        if not data:
            raise CheckpointError(f"{what} is truncated at byte {start + copied} (an incomplete download?)")
        if out_offset is None:
            write_all(out, data)
        else:
            view, at = memoryview(data), out_offset + copied
            while view:
                n = os.pwrite(out, view, at)
                view, at = view[n:], at + n
        copied += len(data)
