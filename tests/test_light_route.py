"""The on-disk cuts at disk speed (issue 36): they run with torch and transformers unimportable, rewrite config.json
as transformers would, and hash the source once, alongside the copy, into a record that identifies its bytes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import AutoConfig

from hf_layerprune.report import provenance
from hf_layerprune.architectures import ARCHITECTURES
from hf_layerprune.surgery.gguf_export import export_gguf
from hf_layerprune.flow.pipeline import run
from hf_layerprune.recipe import Recipe
from hf_layerprune.report import read_report
from hf_layerprune.surgery.layers import plain_config, read_config, read_safetensors_header, write_config
from tiny_models import FAMILIES, tiny_model

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")
# the CLI with a meta path finder that refuses the heavy packages (and says which module asked for one)
BLOCKED_CLI = textwrap.dedent(f"""
    import sys, traceback
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {HEAVY!r}:
                print("IMPORT ATTEMPTED: " + name, file=sys.stderr)
                traceback.print_stack(limit=6)
                raise ImportError("blocked by the test: " + name)
    sys.meta_path.insert(0, Refuse())
    sys.argv = ["hf-layerprune", *sys.argv[1:]]
    from hf_layerprune.cli import main
    main()
""")


def cli_without_torch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess where importing torch, transformers, peft or bitsandbytes fails; an attempt that
    the code caught and survived counts as a failure too."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "LAYERPRUNE_CACHE": str(cwd / "cache")}
    proc = subprocess.run([sys.executable, "-c", BLOCKED_CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "IMPORT ATTEMPTED" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_streaming_cut_runs_with_torch_and_transformers_unimportable(tmp_path):
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    proc = cli_without_torch("prune", str(src), "--layers", "1,4", "--heal", "none", "--no-eval", "-o", "out",
                             cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    report = read_report(out)
    assert report["route"] == "streaming" and report["kept_layers"] == [0, 2, 3, 5]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    header, _ = read_safetensors_header(out / "model.safetensors")
    assert "model.layers.3.mlp.down_proj.weight" in header and "model.layers.4.mlp.down_proj.weight" not in header
    source_digest = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    assert report["provenance"]["base_model"]["files"]["model.safetensors"] == source_digest
    assert (out / "README.md").is_file()


def test_gguf_cut_runs_with_torch_and_transformers_unimportable(tmp_path):
    src = tmp_path / "tiny.Q8_0.gguf"
    export_gguf(tiny_model("llama", num_layers=6), src, out_type="Q8_0")
    proc = cli_without_torch("prune", str(src), "--layers", "2,3", "--format", "gguf", "--heal", "none",
                             "--no-eval", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_report(tmp_path / "out")
    assert report["route"] == "gguf" and report["num_layers_after"] == 4
    assert report["provenance"]["base_model"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert list((tmp_path / "out").glob("*.gguf"))


@pytest.mark.parametrize("family", FAMILIES)
def test_config_json_rewritten_as_transformers_writes_it(family, tmp_path):
    """The JSON route (no transformers) writes the same config.json as AutoConfig + save_pretrained, byte for byte
    apart from `transformers_version` (the source's is kept); families whose per-layer fields transformers derives
    (an `expand` rule) go through AutoConfig."""
    src, by_json, by_transformers = tmp_path / "src", tmp_path / "json", tmp_path / "hf"
    tiny_model(family).save_pretrained(src)
    kept = [1, 2, 4]
    raw = plain_config(src)
    assert (raw is None) == (ARCHITECTURES[family].expand is not None)
    if raw is None:
        return
    for folder in (by_json, by_transformers):
        folder.mkdir()
    write_config(read_config(src), kept, by_json)
    write_config(AutoConfig.from_pretrained(src), kept, by_transformers)

    def lines(folder):
        return [line for line in (folder / "config.json").read_text().splitlines() if "transformers_version" not in line]

    assert lines(by_json) == lines(by_transformers)


def test_config_json_needs_transformers_when_it_leaves_out_a_derived_field(tmp_path):
    """qwen2 derives `layer_types` from `max_window_layers` when config.json omits it: that one goes to AutoConfig."""
    tiny_model("qwen2").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert plain_config(tmp_path) is not None
    config.pop("layer_types")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert plain_config(tmp_path) is None


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES.names()))
def test_tied_by_default_is_transformers_default(model_type):
    """A config.json may omit `tie_word_embeddings`: the JSON route then takes the family's default from this table."""
    assert AutoConfig.for_model(model_type).tie_word_embeddings == ARCHITECTURES[model_type].tied_by_default


@pytest.fixture
def fresh_hash_cache(tmp_path, monkeypatch):
    """An empty sha256 cache (in memory and on disk) that keeps every file; the list of files actually hashed."""
    from hf_layerprune.runtime.cache import FileResults

    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(provenance, "DIGESTS", FileResults("sha256", persist_from=0))
    hashed: list[str] = []
    real = provenance._hash_file
    monkeypatch.setattr(provenance, "_hash_file", lambda path, stop=None: hashed.append(Path(path).name) or real(path, stop))
    return hashed


def new_process() -> None:
    """What a new run starts with: nothing in memory, the cache folder on disk."""
    provenance.DIGESTS.forget()


def test_provenance_hashes_each_file_once_and_changes_with_one_kept_byte(tmp_path, monkeypatch, fresh_hash_cache):
    hashed = fresh_hash_cache
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    shard = src / "model.safetensors"

    def cut(out: str) -> dict:
        run(Recipe(model=str(src), layers=[1, 4], heal="none", evaluate=False, output_dir=str(tmp_path / out)), log=lambda _: None)
        return read_report(tmp_path / out)["provenance"]["base_model"]

    first = cut("a")
    assert sorted(hashed) == sorted(set(hashed)) and "model.safetensors" in hashed, hashed  # each file once
    assert first["files"]["model.safetensors"] == hashlib.sha256(shard.read_bytes()).hexdigest()  # = sha256sum, Hub LFS oid

    hashed.clear()
    new_process()
    assert cut("again") == first and hashed == []  # the next run reuses the digests: no pass over the bytes at all

    header, data_start = read_safetensors_header(shard)
    begin, end = header["model.layers.2.self_attn.q_proj.weight"]["data_offsets"]  # a kept layer's tensor
    data = bytearray(shard.read_bytes())
    data[data_start + (begin + end) // 2] ^= 0x01
    before = shard.stat()
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: only the ctime tells
    new_process()
    second = cut("b")
    assert hashed == ["model.safetensors"]
    assert second["files"]["model.safetensors"] == hashlib.sha256(bytes(data)).hexdigest()
    assert second["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    assert second["files"]["config.json"] == first["files"]["config.json"]


def test_shards_are_hashed_once_each_by_parallel_threads(tmp_path, monkeypatch, fresh_hash_cache):
    """hashed_alongside spreads the files over worker threads (one sha256 core is slower than the kernel's copy);
    each file is hashed once, its digest is sha256sum's, and the digest store keeps every one of them."""
    import threading
    import time

    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src, max_shard_size="40KB")
    shards = sorted(src.glob("*.safetensors"))
    threads: dict[str, str] = {}
    real = provenance._hash_file

    def slow(path, stop=None):  # long enough that every worker takes a file
        threads[Path(path).name] = threading.current_thread().name
        time.sleep(0.05)
        return real(path, stop)

    monkeypatch.setattr(provenance, "_hash_file", slow)
    with provenance.hashed_alongside(shards, workers=2):
        pass
    assert sorted(threads) == sorted(p.name for p in shards) and len(set(threads.values())) == 2
    new_process()  # the digests come back from the store file alone
    for shard in shards:
        assert provenance.sha256_file(shard) == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert len(threads) == len(shards)  # nothing hashed twice


def test_help_imports_neither_torch_nor_transformers():
    code = "import sys; from hf_layerprune.cli import app; print(sorted(m for m in {!r} if sys.modules.get(m) is not None))".format(HEAVY)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_loads_typers_rich_help_only_when_it_is_used():
    """typer.rich_utils (rich's markdown and traceback renderers: ~130 modules) is loaded lazily: importing the CLI
    does not import it, yet --help is rich and a usage error is still one line (the patch made before the load)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import sys; from hf_layerprune.cli import app; print(sorted(m for m in ('markdown_it', 'pygments') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    cli = [sys.executable, "-m", "hf_layerprune", "prune"]
    bad = subprocess.run([*cli, "x", "--seq-len", "abc"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("Error: ") and "╭" not in bad.stderr
    help_text = subprocess.run([*cli, "--help"], env=env, capture_output=True, text=True, check=True).stdout
    assert "╭─ Arguments" in help_text


def test_kernel_copy_and_its_chunked_fallback_write_the_same_shards(tmp_path, monkeypatch):
    """Tensors are copied in source order to their planned offsets; without copy_file_range (another platform, a
    file system that refuses it) the chunked pread/pwrite fallback writes the same bytes."""
    from hf_layerprune.surgery.layers import prune_checkpoint

    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src, max_shard_size="40KB")
    (tmp_path / "kernel").mkdir(), (tmp_path / "chunks").mkdir()
    prune_checkpoint(src, tmp_path / "kernel", [1, 4], max_shard_size="30KB", copy_buffer=4096)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    prune_checkpoint(src, tmp_path / "chunks", [1, 4], max_shard_size="30KB", copy_buffer=4096)
    shards = sorted(p.name for p in (tmp_path / "kernel").glob("*.safetensors"))
    assert len(shards) > 1 and shards == sorted(p.name for p in (tmp_path / "chunks").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "kernel" / name).read_bytes() == (tmp_path / "chunks" / name).read_bytes(), name


def _source_places(src: Path) -> dict[str, tuple[str, int]]:
    """Each tensor's (file, absolute byte offset) in a safetensors checkpoint directory."""
    places = {}
    for file in sorted(src.glob("*.safetensors")):
        header, start = read_safetensors_header(file)
        places.update({k: (file.name, start + v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__"})
    return places


def test_output_shards_keep_source_shards_and_page_offsets(tmp_path):
    """The streaming cut writes each source shard's kept tensors into shards of their own, in source order, with the
    header padded so that every tensor lies at its source offset modulo the page size (the kernel then copies whole
    pages): here all tensor sizes are page multiples, so every tensor is aligned, across the removed layer too. The
    padded headers load in safetensors and transformers, and the tensors are the source's."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from hf_layerprune.surgery.byte_copy import PAGE
    from hf_layerprune.surgery.layers import prune_checkpoint

    model = tiny_model("llama", num_layers=4, hidden_size=1024, intermediate_size=64, num_attention_heads=2,
                       num_key_value_heads=2, head_dim=64)
    src, out = tmp_path / "src", tmp_path / "out"
    model.save_pretrained(src, max_shard_size="4MB")
    out.mkdir()
    prune_checkpoint(src, out, [1], max_shard_size="3MB")
    before, after = _source_places(src), _source_places(out)
    rename = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate([0, 2, 3])}

    def source_key(key: str) -> str:
        return next((key.replace(n, o) for o, n in rename.items() if n in key), key)

    shards = {file for file, _ in after.values()}
    assert len(shards) > len(list(src.glob("*.safetensors")))  # split at --max-shard-size as well
    for shard in shards:
        keys = [k for k, (file, _) in after.items() if file == shard]
        assert len({before[source_key(k)][0] for k in keys}) == 1, shard  # one source file per output shard
        assert [before[source_key(k)][1] for k in sorted(keys, key=lambda k: after[k][1])] == sorted(
            before[source_key(k)][1] for k in keys)  # in source order
    for key, (_, offset) in after.items():
        assert offset % PAGE == before[source_key(key)][1] % PAGE, key
    for shard in shards:
        with safe_open(out / shard, "pt") as f:
            for key in f.keys():
                with safe_open(src / before[source_key(key)][0], "pt") as g:
                    assert torch.equal(f.get_tensor(key), g.get_tensor(source_key(key))), key
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_gguf_tensors_adjacent_in_the_source_are_one_copy(tmp_path):
    """GGUF surgery copies each run of tensors that lie back to back in the source (zero padding between them) in one
    call; padding the source does not hold as zeros is written, not copied, and a replaced tensor breaks the run."""
    from hf_layerprune.surgery.gguf_surgery import _data_steps

    data = bytearray(200)
    data[10:16] = b"\0" * 6  # padding of a 10-byte tensor at 0 to 16 (alignment 8)
    data[116:120] = b"junk"  # a 4-byte gap that is not zeros
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        items = [("a", 0, 10, False), ("b", 16, 100, False), ("c", 120, 8, False), ("d", 128, 8, True),
                 ("e", 136, 8, False), ("f", 160, 8, False)]
        steps = _data_steps(fd, items, 8)
    finally:
        os.close(fd)
    assert steps == [("copy", 0, 116), ("bytes", bytes(4)), ("copy", 120, 8), ("tensor", "d"), ("copy", 136, 8),
                     ("copy", 160, 8)]


def test_copies_start_the_outputs_64k_pieces_on_a_64k_boundary(tmp_path, monkeypatch):
    """The kernel copies through a 64 KiB pipe; its pieces fill one large page-cache folio each only when they start
    at a multiple of 64 KiB of the output (a copy started elsewhere measured ~1.45x slower). So copy_range's first
    piece ends at the next such boundary, at a given offset or appended. Offsets that agree modulo the page go
    through the kernel; others through a reused buffer (the kernel then copies page fragments), in pieces of at
    most the buffer. The bytes are the source's either way, and an appended copy leaves the position after them."""
    from hf_layerprune.surgery import byte_copy

    data = os.urandom(300_000)
    (tmp_path / "src").write_bytes(data)
    kernel, buffered = [], []
    real_copy, real_pwrite = getattr(os, "copy_file_range", None), os.pwrite
    if real_copy is not None:
        monkeypatch.setattr(os, "copy_file_range", lambda s, d, n, a=None, b=None: kernel.append(n) or real_copy(s, d, n, a, b))
    monkeypatch.setattr(os, "pwrite", lambda fd, view, at: buffered.append(len(view)) or real_pwrite(fd, view, at))
    fin = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        for name, start, at in (("placed", 5000 + byte_copy.PAGE, 5000), ("appended", 5000, None),
                                ("aligned", 100, 2 * byte_copy.SPLICE_BYTES + 100), ("shifted", 100, 5000)):
            kernel.clear(), buffered.clear()
            out = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT, 0o644)
            if at is None:
                byte_copy.write_all(out, b"h" * 5000)
            byte_copy.copy_range(fin, out, start, 250_000, out_offset=at, chunk=100_000)
            if at is None:
                byte_copy.write_all(out, b"t")
            os.close(out)
            to = 5000 if at is None else at
            calls = kernel if real_copy is not None and (start - to) % byte_copy.PAGE == 0 else buffered
            assert calls[0] == (-to % byte_copy.SPLICE_BYTES or calls[0]) and sum(calls) == 250_000, (name, calls)
            assert name != "shifted" or (calls is buffered and max(calls) <= 100_000)
            written = (tmp_path / name).read_bytes()
            assert written[to:to + 250_000] == data[start:start + 250_000], name
            assert at is not None or written[to + 250_000:] == b"t"
    finally:
        os.close(fin)


def test_gguf_header_scan_is_kept_for_the_next_run(tmp_path, monkeypatch):
    """The next run on the same GGUF (a sweep, another --layers) reads the header scan from the cache folder instead
    of walking the vocabulary again, and writes the same bytes. A rewritten file, or a cached scan that does not
    match the file's own counts, is scanned again."""
    from hf_layerprune.runtime.cache import FileResults
    from hf_layerprune.surgery import gguf_surgery

    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_surgery, "SCANS", FileResults("gguf-headers", persist_from=0))
    scans = []
    real = gguf_surgery._scan
    monkeypatch.setattr(gguf_surgery, "_scan", lambda buf: scans.append(1) or real(buf))
    src = tmp_path / "src.gguf"
    export_gguf(tiny_model("llama", num_layers=4), src, out_type="Q8_0")

    def cut(name: str) -> bytes:
        gguf_surgery.SCANS.forget()  # a new process
        gguf_surgery.prune_gguf(src, tmp_path / name, [1])
        return (tmp_path / name).read_bytes()

    first = cut("a.gguf")
    assert len(scans) == 1
    assert cut("b.gguf") == first and len(scans) == 1
    src.write_bytes(src.read_bytes())  # same bytes, a new ctime: not known any more
    assert cut("c.gguf") == first and len(scans) == 2
    (store,) = (tmp_path / "cache" / "gguf-headers").glob("*.json")  # one entry per source file
    data = json.loads(store.read_text())
    assert data[0] == os.path.realpath(src)
    data[5]["tensors"].pop()  # a scan that does not match the file
    store.write_text(json.dumps(data))
    assert cut("d.gguf") == first and len(scans) == 3
