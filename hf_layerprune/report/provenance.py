"""Provenance without local paths: what a report may say about where its inputs came from.

A report is published with the model (``layerprune.json``, the card's reproduce command and recipe). Absolute paths
of the maker's machine (a GGUF inside site-packages, a task directory in the home cache, a temp output directory)
are useless to a reader and say more than they should. ``portable_report`` is applied by ``write_report`` to every
report written:

- ``provenance``: the base model as ``{"hub_id", "commit"}`` or, for a local file, ``{"name", "sha256", "bytes"}``
  (a local directory: its name and the sha256 of its config and weight files); every other local input file
  (perplexity text, calibration or healing data) the same way under ``files``. Recorded while the paths still exist.
  Each file is hashed once: the on-disk cuts hash the source on a second thread while they copy it
  (``hashed_alongside``), and ``sha256_file`` reuses a digest while the file's path, size, mtime, ctime and inode
  are unchanged (in memory, and across runs in the cache folder's ``sha256/`` entries, one per file).
- ``base_model``: a local path becomes ``./name`` (plainly local, never read as a Hub id).
- ``command`` and ``recipe``: local paths replaced by their file or folder name, so the recipe runs
  after replacing only the model path (and placing any named local file beside it). ``--include-path`` of the tasks
  that hf-layerprune renders itself (``local_*``) is dropped: the tool renders them again on the reader's machine.
- everywhere else: any absolute path inside a string is replaced by its last component.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import shlex
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from hf_layerprune.runtime.cache import FileResults, cache_root, file_identity

HUB = "https://huggingface.co"
CARD_FILENAME = "README.md"  # a model card, in a Hub repo and in an output folder
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# a path starting at the root or the home directory, not preceded by a word character, ':' or '/' (URLs, "tokens/s")
_ABS_PATH = re.compile(r"(?:^|(?<=[\s'\"=(,\[]))(?:~/|[A-Za-z]:\\|/(?!/))[^\s'\"`,;()\[\]{}<>|]+")
_RECIPE_PATHS = ("model", "output_dir", "include_path", "perplexity", "calibration", "heal_data", "base_card", "text")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".json", ".model")
HASH_LIMIT = 64 * 2**30  # bytes of a local directory's files hashed at most (larger ones: names and sizes only)


def hub_id(value: Any) -> str | None:
    """``value`` when it is a plausible Hub repo id (``name`` or ``org/name``) and not a local path, else None."""
    if not isinstance(value, str) or not HUB_ID.match(value) or ".." in value or value.endswith((".gguf", ".safetensors")):
        return None
    if os.path.exists(value):
        return None
    return value


# sha256 of files already hashed (cache.FileResults): each file hashed at most once in a run (while the cut reads it,
# `hashed_alongside`, or when the report is first written), and files of 1 MiB or more not again in the next runs
# while their identity is unchanged (a sweep, another --layers). Any write to a file changes its ctime (which no tool
# can set back), so a digest is reused only for the same bytes.
DIGESTS = FileResults("sha256")
_SLICE = 16 * 2**20


def _hash_file(path: str | os.PathLike, stop: threading.Event | None = None) -> str | None:
    """sha256 of the whole file (what `sha256sum` prints and the Hub's LFS pointer holds), read through memory maps
    of _SLICE bytes, one at a time (hashlib releases the GIL on them; the resident set stays one slice, where one
    map of the file would count every page read); None when `stop` is set first."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for start in range(0, size, _SLICE):
            if stop is not None and stop.is_set():
                return None
            with mmap.mmap(f.fileno(), min(_SLICE, size - start), offset=start, access=mmap.ACCESS_READ) as window:
                h.update(window)
    return h.hexdigest()


def _remember(path: str | os.PathLike, stop: threading.Event | None = None) -> str | None:
    key = file_identity(path)
    known = DIGESTS.get(key)
    if known is not None:
        return known
    digest = _hash_file(path, stop)
    if digest is not None and file_identity(path) == key:  # unchanged while it was read: the digest is the file's
        DIGESTS.put(key, digest)
    return digest


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, hashed once: a digest taken earlier (while the cut read it, or by an earlier run) is reused
    while the file's path, size, mtime, ctime and inode are unchanged."""
    return _remember(path)


@contextmanager
def hashed_alongside(paths: Iterable[str | os.PathLike], workers: int | None = None) -> Iterator[None]:
    """Hash `paths` on other threads while the body (an on-disk cut) reads them: the record costs no pass of its
    own over the files (the hash reads the pages the copy brings in, or the copy those the hash did), and
    `sha256_file` finds the digests when the report is written. `workers` threads (default: one per CPU) take the
    files in the order given, the copy's: sha256 runs at ~1.3 GB/s on one core of the 2-core machine, slower than
    the kernel's copy, so one thread alone paced the cut of a many-shard checkpoint (hashlib releases the GIL).
    Larger than HASH_LIMIT in all: not hashed at all (file_record then records sizes only). Files whose digest is
    known start no thread (a second cut of the same source: ~1 ms of a small GGUF's cut)."""
    paths = [Path(p) for p in paths]
    if sum(p.stat().st_size for p in paths) > HASH_LIMIT:
        yield
        return
    paths = [p for p in paths if DIGESTS.get(file_identity(p)) is None]
    if not paths:
        yield
        return
    stop = threading.Event()
    todo = iter(paths)
    lock = threading.Lock()

    def work() -> None:
        while not stop.is_set():
            with lock:
                path = next(todo, None)
            if path is None:
                return
            try:
                if _remember(path, stop) is None:
                    return
            except OSError:  # unreadable now: the report's own hash says so later, in one line
                continue

    count = max(1, min(len(paths), workers or os.cpu_count() or 1))
    threads = [threading.Thread(target=work, name=f"provenance-sha256-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    except BaseException:
        stop.set()
        raise
    finally:
        for thread in threads:
            thread.join()


def is_local_path(value: Any) -> bool:
    """True for strings that name a path on this machine: absolute, ``~``, ``./``, ``../`` or an existing file."""
    if not isinstance(value, str) or not value or "\n" in value:
        return False
    if value.startswith(("/", "~", "./", "../")) or re.match(r"^[A-Za-z]:\\", value):
        return True
    return ("/" in value or os.sep in value) and os.path.exists(value)


def last_component(value: str) -> str:
    return value.replace("\\", "/").rstrip("/").rpartition("/")[2] or value


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """{"name", "sha256", "bytes"} of a local file; a directory: {"name", "files": {name: sha256 or size}}."""
    p = Path(path).expanduser()
    if p.is_file():
        return {"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES and not f.name.startswith("."))
        total = sum(f.stat().st_size for f in files)
        record: dict[str, Any] = {"name": p.name}
        record["files"] = {f.name: sha256_file(f) if total <= HASH_LIMIT else {"bytes": f.stat().st_size} for f in files}
        return record
    return {"name": last_component(str(path))}


def _tasks_cache() -> str:
    """Where hf-layerprune renders the local task YAMLs (``local_*``): an --include-path there is regenerated."""
    return str(cache_root() / "tasks")


_RENDERED_TASKS = re.compile(r"(^|[/\\])hf-layerprune[/\\]tasks[/\\][0-9a-f]{12}[/\\]?$")


def _rendered_tasks(value: Any) -> bool:
    """An --include-path of the task YAMLs hf-layerprune rendered: under this machine's cache, or named like one
    (`.../hf-layerprune/tasks/<12 hex>`), so an old report reads the same wherever its cache was."""
    if not isinstance(value, str):
        return False
    if _RENDERED_TASKS.search(value):
        return True
    try:
        return str(Path(value).expanduser().resolve()).startswith(str(Path(_tasks_cache()).resolve()))
    except OSError:
        return False


def portable_command(command: str) -> str:
    """The command line with local paths reduced to their names and an auto-rendered --include-path dropped; the
    rest of the text is kept as it was written."""
    try:
        words = shlex.split(command)
    except ValueError:
        return scrub(command)
    out = command
    for i, word in enumerate(words):
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if word == "--include-path" and i + 1 < len(words) and _rendered_tasks(words[i + 1]):
            out = re.sub(r"\s*--include-path[ =]+['\"]?" + re.escape(words[i + 1]) + r"['\"]?", "", out, count=1)
        elif is_local_path(value) and not _rendered_tasks(value):
            out = out.replace(value, last_component(value))
    return scrub(out)


def scrub(value: Any) -> Any:
    """Every absolute path inside strings (recursively in dicts and lists) replaced by its last component."""
    if isinstance(value, str):
        if "/" not in value and "\\" not in value:
            return value
        if is_local_path(value) and " " not in value.strip():
            return last_component(value)
        return _ABS_PATH.sub(lambda m: last_component(m.group(0)), value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def provenance(report: dict[str, Any]) -> dict[str, Any]:
    """Where the inputs came from, recorded while the local paths still exist (kept from an earlier write)."""
    old = report.get("provenance") if isinstance(report.get("provenance"), dict) else {}
    out: dict[str, Any] = dict(old)
    base = report.get("base_model")
    if isinstance(base, str) and base:
        if is_local_path(base) and os.path.exists(os.path.expanduser(base)) and base != "./" + last_component(base):
            out["base_model"] = file_record(base)
        elif hub_id(base) and "base_model" not in old:
            out["base_model"] = {"hub_id": base, "commit": report.get("base_revision")}
    files = {f.get("name"): f for f in old.get("files", []) if isinstance(f, dict)}
    recipe = report.get("recipe") if isinstance(report.get("recipe"), dict) else {}
    settings = ((report.get("evaluation") or {}).get("settings") or {}) if isinstance(report.get("evaluation"), dict) else {}
    for role, value in (("perplexity text", recipe.get("perplexity") or settings.get("perplexity")),
                        ("calibration text", recipe.get("calibration")), ("healing text", recipe.get("heal_data"))):
        if isinstance(value, str) and is_local_path(value) and Path(value).expanduser().is_file():
            rec = file_record(value)
            rec["role"] = role
            files[rec["name"]] = rec
    if files:
        out["files"] = list(files.values())
    return out


def portable_report(report: dict[str, Any], *, record_provenance: bool = True) -> dict[str, Any]:
    """A copy of ``report`` with provenance recorded and no local path left (see the module docstring).
    ``record_provenance=False`` (the card) reads no file: it keeps the provenance the report already holds, so a card
    renders the same on every machine, whatever files exist at the report's old paths."""
    out = dict(report)
    record = provenance(report) if record_provenance else report.get("provenance")
    if record:
        out["provenance"] = record
    if isinstance(out.get("command"), str):
        out["command"] = portable_command(out["command"])
    recipe = out.get("recipe")
    if isinstance(recipe, dict):
        recipe = dict(recipe)
        if _rendered_tasks(recipe.get("include_path")):
            recipe["include_path"] = None
        for key in _RECIPE_PATHS:
            if is_local_path(recipe.get(key)):
                recipe[key] = last_component(recipe[key])
        out["recipe"] = recipe
    ev = out.get("evaluation")
    if isinstance(ev, dict):
        ev = dict(ev)
        if isinstance(ev.get("command"), str):  # `hf-layerprune evaluate ...`
            ev["command"] = portable_command(ev["command"])
        if isinstance(ev.get("settings"), dict) and _rendered_tasks(ev["settings"].get("include_path")):
            ev["settings"] = {**ev["settings"], "include_path": "hf-layerprune's local task YAMLs (benchmarks/tasks)"}
        out["evaluation"] = ev
    base = out.get("base_model")
    if is_local_path(base):  # "./name": plainly a local checkpoint, never mistaken for a Hub id
        out["base_model"] = "./" + last_component(base)
    return {k: (v if k in ("command", "base_model") else scrub(v)) for k, v in out.items()}
