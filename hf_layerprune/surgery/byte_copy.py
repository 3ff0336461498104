"""Byte-range copies between files for the on-disk cuts (safetensors shards, GGUF files): in the kernel
(``os.copy_file_range``: no pass through Python's memory) where the offsets allow whole pages and the platform and
file systems allow it, else by chunks through a reused buffer. The GGUF cut appends each kept tensor at the output's
position; the safetensors cut writes each tensor at its planned offset, in source order. The rules behind it were
measured on this project's VM (DEVELOPERS.md, benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import threading
from typing import Iterable

from hf_layerprune.runtime.errors import CheckpointError

CHUNK_BYTES = 4 * 2**20
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


_BUFFERS = threading.local()  # one copy buffer per thread, kept: a new 4 MiB buffer costs ~2 ms of page faults


def _buffer(size: int) -> memoryview:
    buffer = getattr(_BUFFERS, "buffer", None)
    if buffer is None or len(buffer) != size:
        buffer = _BUFFERS.buffer = memoryview(bytearray(size))
    return buffer


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_range(src: int, out: int, start: int, nbytes: int, *, out_offset: int | None = None,
               what: str = "the source file", chunk: int = CHUNK_BYTES) -> None:
    """Copy bytes [start, start+nbytes) of file descriptor `src` to `out`: at `out_offset`, or appended at the
    position of `out` (which then points past them). Where the two offsets agree modulo PAGE, in the kernel
    (copy_file_range: whole pages, no pass through this process); elsewhere, or where the kernel refuses (another
    platform, an old kernel across file systems), through a buffer of `chunk` bytes, reused (4 MiB stays in the CPU's
    cache: a shifted 96 MB copy took 25 ms so, 36 ms in the kernel, 34 ms with a 16 MiB buffer). Either way the
    first piece ends at a multiple of SPLICE_BYTES of the output, so the rest lands in whole large folios."""
    to = os.lseek(out, 0, os.SEEK_CUR) if out_offset is None else out_offset
    first = -to % SPLICE_BYTES or nbytes  # the first piece ends where the output's 64 KiB pieces begin
    copied = 0
    if hasattr(os, "copy_file_range") and (start - to) % PAGE == 0:
        try:
            while copied < nbytes:
                n = os.copy_file_range(src, out, min(nbytes - copied, first if copied == 0 else nbytes),
                                       start + copied, to + copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            pass  # e.g. across file systems on an old kernel; finish by the buffer below
    if copied < nbytes:
        buffer = _buffer(chunk)
        while copied < nbytes:
            want = min(len(buffer), nbytes - copied, first if copied == 0 else nbytes)
            n = os.preadv(src, [buffer[:want]], start + copied)
            if n == 0:
                raise CheckpointError(f"{what} is truncated at byte {start + copied} (an incomplete download?)")
            view, at = buffer[:n], to + copied
            while view:
                written = os.pwrite(out, view, at)
                view, at = view[written:], at + written
            copied += n
    if out_offset is None:
        os.lseek(out, to + nbytes, os.SEEK_SET)
