"""No third-party line on stderr in a plain run, and bitsandbytes imported only for 4-bit work (issue 31).

peft imports bitsandbytes whenever it is installed, and bitsandbytes 0.50 on a CPU with AVX512-BF16 then tries to
download a kernel from the Hub and warns when it cannot (hf_layerprune/runtime/third_party.py). The CLI hides bitsandbytes
until a 4-bit route asks for it. Each command runs in a fresh process (`python -m hf_layerprune`), as a user runs
it, with `kernels` installed (a dependency of transformers) and, for the 4-bit run, `kernels` patched so that
whose `get_kernel` records any kernel request."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import WRITE_TOKEN
from test_evaluation import DATA, TINY_TASK
from tiny_models import save_word_tokenizer, tiny_model

# Lines we print on stderr: the live display's timestamped lines, the summary table, the closing line.
OURS = re.compile(r"^(\[\d\d:\d\d:\d\d\] | {11}\S|[┌│├└]|hf-layerprune summary|Saved |Published |Pushed |Wrote |Error: )")
PROBE = textwrap.dedent("""
    import atexit, json, sys
    record = sys.argv.pop(1)
    atexit.register(lambda: open(record, "w").write(json.dumps(sorted(
        m for m in ("bitsandbytes", "peft", "torch") if sys.modules.get(m) is not None))))
    import os
    if os.environ.get("KERNEL_REQUEST_RECORD"):  # the real `kernels`, its get_kernel recording any request
        import kernels
        def get_kernel(*args, **kwargs):
            open(os.environ["KERNEL_REQUEST_RECORD"], "w").write(repr(args))
            raise RuntimeError("no Hub here")
        kernels.get_kernel = get_kernel
    from hf_layerprune.cli import main
    sys.argv[0] = "hf-layerprune"
    main()
""")


def run(tmp_path: Path, *args: str, env: dict | None = None):
    modules = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    full_env = {**os.environ, "COLUMNS": "120", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(modules), *map(str, args)], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=600)
    foreign = [line for line in proc.stderr.splitlines() if line.strip() and not OURS.match(line)]
    return proc, foreign, json.loads(modules.read_text()) if modules.exists() else None


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("quiet") / "ckpt"
    tiny_model("llama", num_layers=4).save_pretrained(path)
    save_word_tokenizer(path)
    return path


def test_a_plain_streaming_cut_prints_only_our_lines_and_imports_no_bitsandbytes(ckpt, tmp_path):
    proc, foreign, modules = run(tmp_path, "prune", ckpt, "--layers", "1", "--heal", "none", "--no-eval", "-o", "out")
    assert proc.returncode == 0, proc.stderr
    assert not foreign, foreign
    assert "bitsandbytes" not in modules


def test_analyze_and_a_healed_evaluated_push_print_only_our_lines(ckpt, tmp_path, hub_server):
    """The in-memory route imports the Trainer (and so peft): still no bitsandbytes, no third-party line."""
    proc, foreign, modules = run(tmp_path, "analyze", ckpt, "--metric", "bi", "--calibration-samples", "4",
                                 "--seq-len", "16")
    assert proc.returncode == 0, proc.stderr
    assert not foreign, foreign
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    proc, foreign, modules = run(
        tmp_path, "push", ckpt, "--repo-id", "acme/quiet", "--drop", "1", "--metric", "bi", "--heal", "absorb",
        "--heal-steps", "2", "--calibration-samples", "4", "--seq-len", "16", "--tasks", "tiny_mc", "--limit", "4",
        "--include-path", tasks, env=hub_server.env(tmp_path / "hf-cache", WRITE_TOKEN))
    assert proc.returncode == 0, proc.stderr
    assert not foreign, proc.stderr
    assert "peft" in modules and "bitsandbytes" not in modules


def test_4bit_work_imports_bitsandbytes_without_fetching_a_hub_kernel(ckpt, tmp_path):
    """bitsandbytes asks `kernels.get_kernel` for its CPU kernel at import when the CPU has AVX512-BF16: the patched
    function records such a request (none may come unless HF_LAYERPRUNE_HUB_KERNELS=1). On a CPU without the instruction
    bitsandbytes never asks; the stderr check holds on both."""
    try:
        importlib.metadata.version("bitsandbytes")  # installed (this process hides it, as the CLI does)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("bitsandbytes is not installed")
    text = tmp_path / "text.raw"
    text.write_text(" ".join(f"w{3 + (7 * i) % 40}" for i in range(400)), encoding="utf-8")
    proc, foreign, modules = run(
        tmp_path, "prune", ckpt, "--drop", "1", "--load-in-4bit", "--dtype", "float32", "--calibration", text,
        "--calibration-samples", "4", "--seq-len", "16", "--heal-steps", "2", "--no-eval", "-o", "out4",
        env={"KERNEL_REQUEST_RECORD": str(tmp_path / "kernel-requested")})
    assert proc.returncode == 0, proc.stderr
    assert not foreign, foreign
    assert "bitsandbytes" in modules
    assert not (tmp_path / "kernel-requested").exists()
