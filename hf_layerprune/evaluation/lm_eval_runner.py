"""lm-eval on an in-memory model: ``simple_evaluate`` with ``HFLM(pretrained=model, tokenizer=tokenizer)``.

Results are normalised so that every number carries its context (schema: docs/report.md, "evaluation"):

    {task: {metric: {"value", "stderr", "n_shot", "limit", "samples", "samples_total", "version",
                     "higher_is_better", ["parent"]}}}

``metric`` is lm-eval's metric name with the ``,none`` filter suffix dropped (``acc``, ``acc_norm``,
``word_perplexity``); other filters stay (``exact_match,strict-match``). Sub-tasks of a group (the 57 MMLU
subjects) are kept with ``"parent"`` naming their group.

Results are cached on disk, one JSON file per (model fingerprint, task, settings); see ``cache_key``. The model
fingerprint is ``model_id@commit`` when the caller gives an immutable Hub commit sha, else a hash of the weights
and config (a healed model never reuses its base's results).

Long module: everything that touches lm-eval's API (task lookup, rendering of the local task YAMLs, the
in-memory model wrapper, per-document samples, the cache) is kept behind this one module, so that an lm-eval
upgrade is read and fixed in one place.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from hf_layerprune.runtime.cache import cache_root
from hf_layerprune.runtime.errors import ConfigError, HubError, LayerPruneError, StageError

log_ = logging.getLogger(__name__)

# The zero-shot suite of the depth-pruning papers (ShortGPT, Shortened LLaMA, LLM-Streamline, GradMAP...).
DEFAULT_TASKS: tuple[str, ...] = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "openbookqa")
OPTIONAL_TASKS: tuple[str, ...] = ("mmlu",)  # opt-in: 57 sub-tasks, usually 5-shot
# Offline twins of the standard tasks, rendered by benchmarks/local_tasks.py from local copies of the data.
LOCAL_TASKS: dict[str, str] = {
    "arc_easy": "local_arc_easy",
    "arc_challenge": "local_arc_challenge",
    "hellaswag": "local_hellaswag",
    "piqa": "local_piqa",
    "boolq": "local_boolq",
    "openbookqa": "local_openbookqa",
    "mmlu": "local_mmlu",
    "wikitext": "local_wikitext",
}
PRESETS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_TASKS,
    "default+mmlu": DEFAULT_TASKS + OPTIONAL_TASKS,
    # no local WinoGrande: the data is not available offline (benchmarks/tasks/README.md)
    "local": tuple(LOCAL_TASKS[t] for t in DEFAULT_TASKS if t in LOCAL_TASKS),
    "local+mmlu": tuple(LOCAL_TASKS[t] for t in DEFAULT_TASKS if t in LOCAL_TASKS) + ("local_mmlu",),
}
CACHE_VERSION = 2  # 2: per-document scores (``samples``) are cached with the results

Log = Callable[[str], None]


def resolve_tasks(tasks: str | Iterable[str] | None) -> list[str]:
    """Task names from a list or a comma-separated string; presets (``default``, ``local``...) expanded."""
    if tasks is None:
        return list(DEFAULT_TASKS)
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    out: list[str] = []
    for name in names:
        for task in PRESETS.get(name, (name,)):
            if task not in out:
                out.append(task)
    if not out:
        raise ConfigError("give at least one evaluation task (--tasks)")
    return out


# --------------------------------------------------------------------------------------------- task manager
_TASK_MANAGERS: dict[tuple, Any] = {}


def task_manager(include_path: str | os.PathLike | Iterable | None, tasks: list[str]):
    """A TaskManager that knows ``tasks``; built-in tasks are indexed only when needed (about 10 s on 2 cores)."""
    from lm_eval.tasks import TaskManager

    paths = _paths(include_path)
    for include_defaults in ((False, True) if paths else (True,)):
        key = (tuple(paths), include_defaults)
        if key not in _TASK_MANAGERS:
            _TASK_MANAGERS[key] = TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)
        tm = _TASK_MANAGERS[key]
        if all(t in tm.all_tasks for t in tasks):
            return tm
    missing = [t for t in tasks if t not in tm.all_tasks]
    hints = []
    for t in missing:
        close = difflib.get_close_matches(t, tm.all_tasks, n=3)
        hints.append(f"{t!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    extra = "" if paths else "; local tasks need --include-path (see benchmarks/tasks/README.md)"
    raise ConfigError(f"unknown lm-eval task(s): {', '.join(hints)}{extra}")


def _paths(include_path) -> list[str]:
    if include_path is None:
        return []
    items = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    out = []
    for item in items:
        path = Path(item).expanduser()
        if not path.is_dir():
            raise ConfigError(f"--include-path {item}: not a directory")
        out.append(str(path.resolve()))
    return out


def default_local_include_path() -> Path | None:
    """Render benchmarks/tasks for the local data (repo checkouts only); None when not available."""
    repo = Path(__file__).resolve().parents[2]
    helper = repo / "benchmarks" / "local_tasks.py"
    if not helper.is_file():
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("_layerprune_local_tasks", helper)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    try:
        return Path(module.include_path())
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None


def _entry_fingerprint(tm, name: str, depth: int = 0) -> Any:
    """What defines a task: its YAML config, its children's (groups) and its local data files' size/mtime."""
    entry = tm.task_index.get(name)
    if entry is None or depth > 4:
        return name
    cfg = entry.cfg or {}
    out: dict[str, Any] = {"cfg": cfg}
    if entry.yaml_path is not None:
        helper = Path(entry.yaml_path).with_name("utils.py")
        if helper.is_file():
            out["utils"] = hashlib.sha256(helper.read_bytes()).hexdigest()
    files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) if isinstance(cfg, dict) else None
    if isinstance(files, dict):
        stats = {}
        for path in files.values():
            for p in [path] if isinstance(path, str) else list(path or []):
                if os.path.exists(str(p)):
                    st = os.stat(p)
                    stats[str(p)] = [st.st_size, int(st.st_mtime)]
        out["data"] = stats
    children = cfg.get("task") if isinstance(cfg, dict) else None
    if isinstance(children, list):
        out["children"] = [_entry_fingerprint(tm, c, depth + 1) for c in children if isinstance(c, str)]
    return out


def _is_local(tm, name: str, depth: int = 0) -> bool:
    """True when the task (and all its children) read local files only (json/csv/text with data_files)."""
    entry = tm.task_index.get(name)
    if entry is None or not entry.cfg or depth > 4:
        return False
    cfg = entry.cfg
    children = cfg.get("task")
    if isinstance(children, list):
        return all(isinstance(c, str) and _is_local(tm, c, depth + 1) for c in children)
    kwargs = cfg.get("dataset_kwargs") or {}
    return cfg.get("dataset_path") in ("json", "csv", "text", "parquet") and bool(kwargs.get("data_files"))


@contextlib.contextmanager
def offline_datasets(enabled: bool = True) -> Iterator[None]:
    """HF_DATASETS_OFFLINE/HF_HUB_OFFLINE for the duration (env vars and the already-imported constants)."""
    if not enabled:
        yield
        return
    import datasets
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


# --------------------------------------------------------------------------------------------- caching
def default_cache_dir() -> Path:
    return cache_root() / "lm-eval"


def model_fingerprint(model, tokenizer=None, *, model_id: str | None = None, revision: str | None = None) -> str:
    """``model_id@sha:dtype`` for an immutable Hub commit, else ``sha256:<hash of weights, config, tokenizer>``."""
    import torch

    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    if model_id and revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"{model_id}@{revision}:{dtype}"
    h = hashlib.sha256()
    h.update(model.config.to_json_string(use_diff=False).encode())
    if tokenizer is not None:
        h.update(f"{type(tokenizer).__name__}:{len(tokenizer)}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def cache_key(fingerprint: str, task: str, settings: dict[str, Any], task_def: Any) -> str:
    from importlib.metadata import version

    payload = {
        "v": CACHE_VERSION,
        "model": fingerprint,
        "task": task,
        "settings": settings,
        "task_def": task_def,
        "lm_eval": version("lm_eval"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _cache_read(cache_dir: Path | None, key: str) -> dict | None:
    """{"results": ..., "samples": ...} of a cached task, or None."""
    if cache_dir is None:
        return None
    path = cache_dir / f"{key}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        return {"results": entry["results"], "samples": entry.get("samples") or {}}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_write(cache_dir: Path | None, key: str, task: str, results: dict, samples: dict | None = None) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"task": task, "results": results, "samples": samples or {}}), encoding="utf-8")
        os.replace(tmp, cache_dir / f"{key}.json")
    except OSError as exc:  # a read-only cache must not fail an evaluation
        log_.warning("could not write the lm-eval cache in %s: %s", cache_dir, exc)


# --------------------------------------------------------------------------------------------- results
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def normalize_results(res: dict[str, Any], limit: int | float | None) -> dict[str, dict[str, dict[str, Any]]]:
    """lm-eval's result dict -> {task: {metric: {value, stderr, n_shot, limit, samples, ...}}}."""
    results = dict(res.get("results", {}))
    for name, entry in (res.get("groups") or {}).items():
        results.setdefault(name, entry)
    n_shot = res.get("n-shot", {})
    versions = res.get("versions", {})
    n_samples = res.get("n-samples", {})
    higher = res.get("higher_is_better", {})
    children = {g: list(c) for g, c in (res.get("group_subtasks") or {}).items()}
    parent = {c: g for g, cs in children.items() for c in cs}

    def leaves(name: str, depth: int = 0) -> list[str]:
        if name in children and depth < 8:
            return [leaf for c in children[name] for leaf in leaves(c, depth + 1)]
        return [name]

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, entry in results.items():
        leaf_names = leaves(task)
        effective = [n_samples.get(t, {}).get("effective") for t in leaf_names]
        original = [n_samples.get(t, {}).get("original") for t in leaf_names]
        shots = {n_shot.get(t) for t in leaf_names if n_shot.get(t) is not None}
        metrics: dict[str, dict[str, Any]] = {}
        for key, value in entry.items():
            if "," not in key:
                continue
            name, filt = key.split(",", 1)
            if name.endswith("_stderr") or _number(value) is None:
                continue
            metric = name if filt == "none" else f"{name},{filt}"
            record: dict[str, Any] = {
                "value": _number(value),
                "stderr": _number(entry.get(f"{name}_stderr,{filt}")),
                "n_shot": n_shot.get(task) if n_shot.get(task) is not None else (shots.pop() if len(shots) == 1 else None),
                "limit": limit,
                "samples": sum(e for e in effective if e) if all(e is not None for e in effective) else entry.get("sample_len"),
                "samples_total": sum(o for o in original if o) if all(o is not None for o in original) else None,
                "version": versions.get(task),
                "higher_is_better": _higher(higher, [task] + leaf_names, name),
            }
            if task in parent:
                record["parent"] = parent[task]
            metrics[metric] = record
        if metrics:
            out[task] = metrics
    return out


def _target_index(target: Any, choices: list[Any]) -> int | None:
    """The gold answer of a multiple-choice doc as an index into its choices (lm-eval gives an int, a digit string
    or the choice text)."""
    if isinstance(target, bool):
        return None
    if isinstance(target, int):
        return target
    if isinstance(target, str):
        if target.strip().isdigit():
            return int(target.strip())
        texts = [c[1] if isinstance(c, (list, tuple)) and len(c) > 1 else c for c in choices]
        for i, text in enumerate(texts):
            if isinstance(text, str) and text.strip() == target.strip():
                return i
    return None


def compact_samples(logged: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """lm-eval's logged samples -> per task {"doc_id": [...], "target": [...], "choices": [...], metric: [...]}.

    Only what pairing and baselines need is kept: the doc ids, every per-doc metric that is a plain number
    (``acc``, ``acc_norm``...), and for multiple-choice docs the gold index and the number of choices (from the
    loglikelihood requests: one per choice). Tasks whose per-doc values are not numbers (perplexity) are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for task, items in (logged or {}).items():
        rows = sorted((s for s in items if isinstance(s, dict) and "doc_id" in s), key=lambda s: s["doc_id"])
        if not rows:
            continue
        names = [m for m in rows[0].get("metrics", []) if all(_number(r.get(m)) is not None for r in rows)]
        if not names:
            continue
        entry: dict[str, Any] = {"doc_id": [int(r["doc_id"]) for r in rows]}
        for m in names:
            entry[m] = [_number(r[m]) for r in rows]
        args = [r.get("arguments") or [] for r in rows]
        if all(len(a) >= 2 for a in args):  # multiple choice: one loglikelihood request per choice
            entry["choices"] = [len(a) for a in args]
            targets = [_target_index(r.get("target"), a) for r, a in zip(rows, args)]
            if all(t is not None for t in targets):
                entry["target"] = targets
        out[task] = entry
    return out


def _higher(higher: dict[str, dict[str, bool]], tasks: list[str], metric: str) -> bool | None:
    """Whether higher is better for ``metric``: the task's own entry, else its sub-tasks' (groups have none)."""
    for task in tasks:
        value = (higher.get(task) or {}).get(metric)
        if value is not None:
            return bool(value)
    return None


def _descendants(res_children: dict[str, list[str]], name: str) -> list[str]:
    out = [name]
    for child in res_children.get(name, []):
        out += _descendants(res_children, child)
    return out


# --------------------------------------------------------------------------------------------- run
def run_lm_eval(
    model,
    tokenizer,
    tasks: str | Iterable[str] | None = None,
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    include_path: str | os.PathLike | Iterable | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    model_id_for_cache: str | None = None,
    revision: str | None = None,
    bootstrap_iters: int = 1000,
    max_length: int | None = None,
    offline: bool | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Evaluate an in-memory model with lm-eval. Returns {"results": {task: {metric: {...}}}, "samples": per-doc
    scores (``compact_samples``), "settings": {...}, "cached": [tasks served from the cache]}.

    - ``tasks``: names or presets (``default``, ``default+mmlu``, ``local``, ``local+mmlu``); default: DEFAULT_TASKS.
    - ``include_path``: directories of extra task YAMLs. Tasks named ``local_*`` without an include path use the
      repo's benchmarks/tasks rendered for ``$LAYERPRUNE_DATA_DIR`` (default ``../shared/data``).
    - ``offline``: force HF_DATASETS_OFFLINE for the run; None = on when every task reads local files only.
    - ``bootstrap_iters``: lm-eval's bootstrap for stderrs that have no closed form (acc uses a closed form).
    """
    from importlib.metadata import version

    log = log or (lambda msg: log_.info(msg))
    names = resolve_tasks(tasks)
    if include_path is None and any(n.startswith("local_") for n in names):
        include_path = default_local_include_path()
    tm = task_manager(include_path, names)
    settings: dict[str, Any] = {
        "harness": "lm-eval",
        "lm_eval_version": version("lm_eval"),
        "tasks": names,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "batch_size": batch_size,
        "bootstrap_iters": bootstrap_iters,
        "include_path": _paths(include_path) or None,
        "max_length": max_length,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    key_settings = {k: settings[k] for k in ("num_fewshot", "limit", "batch_size", "bootstrap_iters", "max_length")}
    cache = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) if use_cache else None
    fingerprint = model_fingerprint(model, tokenizer, model_id=model_id_for_cache, revision=revision) if cache else ""
    keys = {n: cache_key(fingerprint, n, key_settings, _entry_fingerprint(tm, n)) for n in names} if cache else {}

    results: dict[str, dict[str, dict[str, Any]]] = {}
    samples: dict[str, dict[str, Any]] = {}
    cached: list[str] = []
    todo: list[str] = []
    for name in names:
        hit = _cache_read(cache, keys[name]) if cache else None
        if hit is not None:
            results.update(hit["results"])
            samples.update(hit["samples"])
            cached.append(name)
        else:
            todo.append(name)
    if cached:
        log(f"lm-eval: {', '.join(cached)} from the cache ({cache})")
    if todo:
        if offline is None:
            offline = all(_is_local(tm, n) for n in todo)
        log(f"lm-eval: {', '.join(todo)} (limit={limit}, num_fewshot={num_fewshot}, batch_size={batch_size})")
        raw = _simple_evaluate(
            model, tokenizer, todo, tm, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
            bootstrap_iters=bootstrap_iters, max_length=max_length, offline=offline,
        )
        fresh = normalize_results(raw, limit)
        docs = compact_samples(raw.get("samples") or {})
        children = {g: list(c) for g, c in (raw.get("group_subtasks") or {}).items()}
        for name in todo:
            tree = _descendants(children, name)
            part = {t: fresh[t] for t in tree if t in fresh}
            if not part:
                raise StageError(f"lm-eval returned no numbers for task {name!r}")
            part_docs = {t: docs[t] for t in tree if t in docs}
            results.update(part)
            samples.update(part_docs)
            if cache:
                _cache_write(cache, keys[name], name, part, part_docs)
    return {"results": results, "samples": samples, "settings": settings, "cached": cached}


@contextlib.contextmanager
def _quiet_git_hash():
    """lm-eval 0.4 records `git describe --always` of the working directory in its results, letting git print
    "fatal: not a git repository" on our stderr wherever a user runs outside a repository. Same answer, git's
    stderr discarded (we do not use the hash)."""
    import subprocess

    import lm_eval.evaluator as evaluator

    original = evaluator.get_git_commit_hash

    def quiet() -> str | None:
        try:
            return subprocess.run(["git", "describe", "--always"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (subprocess.CalledProcessError, OSError):
            return None

    evaluator.get_git_commit_hash = quiet
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def _simple_evaluate(model, tokenizer, tasks, tm, *, num_fewshot, limit, batch_size, bootstrap_iters, max_length, offline):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    kwargs: dict[str, Any] = {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size}
    if max_length:
        kwargs["max_length"] = max_length
    was_training = model.training
    model.eval()
    try:
        with offline_datasets(bool(offline)), _quiet_git_hash():
            lm = HFLM(**kwargs)
            res = simple_evaluate(
                model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=tm,
                bootstrap_iters=bootstrap_iters, log_samples=True,
            )
    except LayerPruneError:
        raise
    except (ConnectionError, FileNotFoundError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HubError(
            f"lm-eval could not load the data of {', '.join(tasks)}: {first}. Offline? Use the local tasks: "
            "--tasks local (local copies of the benchmarks; see benchmarks/tasks/README.md)"
        ) from None
    finally:
        model.train(was_training)
    if res is None:  # non-zero rank in a distributed launch
        raise StageError("lm-eval returned no results (non-zero process rank?)")
    return res
