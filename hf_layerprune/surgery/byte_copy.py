"""Byte-range copies between files for the on-disk cuts (safetensors shards, GGUF files): in the kernel
(``os.copy_file_range``: no pass through Python's memory) where the platform and file systems allow, else by
chunks. The GGUF cut appends each kept tensor at the output's position; the safetensors cut writes each tensor at
its planned offset, in source order."""

from __future__ import annotations

import os
from typing import Iterable

from hf_layerprune.runtime.errors import CheckpointError

CHUNK_BYTES = 16 * 2**20
PAGE = 4096  # the page cache's unit: the kernel copies whole pages when source and output offsets agree modulo it
# The kernel's copy goes through a pipe of 16 pages, 64 KiB at a time; each piece lands in one large page-cache folio
# of the output only when it starts at a multiple of 64 KiB there (else in 16 small pages: ~1.45x the time).
SPLICE_BYTES = 16 * PAGE


def page_residue(pieces: Iterable[tuple[int, int, int]], multiple: int) -> int | None:
    """Where an output's data section should start, modulo PAGE, so that the most bytes of `pieces` (source offset,
    offset in the output's data section, bytes) lie at their source offset modulo PAGE; among the starts that are
    a multiple of `multiple` (the format's alignment), None when there is none. A shifted copy goes through the page
    cache a page fragment at a time: ~1.5x slower (benchmarks/RESULTS.md)."""
    weight: dict[int, int] = {}
    for start, offset, nbytes in pieces:
        residue = (start - offset) % PAGE
        weight[residue] = weight.get(residue, 0) + nbytes
    candidates = [r for r in weight if r % multiple == 0]
    return max(candidates, key=lambda r: (weight[r], -r)) if candidates else None


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
            to = os.lseek(out, 0, os.SEEK_CUR) if out_offset is None else out_offset
            limit = -to % SPLICE_BYTES or nbytes  # the first call ends where the output's 64 KiB pieces begin
            while copied < nbytes:
                at = None if out_offset is None else out_offset + copied
                n = os.copy_file_range(src, out, min(nbytes - copied, limit), start + copied, at)
                if n == 0:
                    break
                copied += n
                limit = nbytes
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
