"""Offline lm-eval tasks for the benchmark data in ``../shared/data``: render benchmarks/tasks into an include dir.

The data is never copied: the templates in benchmarks/tasks/ (``*.tmpl``, invisible to lm-eval) hold
``@PATH:relative/file@`` placeholders that become absolute, quoted paths into the data directory.

    from benchmarks.local_tasks import include_path
    run_lm_eval(model, tok, ["local_arc_easy"], include_path=include_path())

    python benchmarks/local_tasks.py                 # render; print the include dir
    python benchmarks/local_tasks.py --check         # also load every task and compare doc counts

Data directory: ``$LAYERPRUNE_DATA_DIR``, else ``../shared/data`` next to the repository.
Include directory: ``$LAYERPRUNE_CACHE/tasks/<hash of the data dir>`` (default ``~/.cache/hf-layerprune``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "tasks"
REPO = Path(__file__).resolve().parents[1]

# Full sizes of the official splits (see ../shared/data/README.md); --check compares against them.
EXPECTED_DOCS = {
    "local_hellaswag": 10042,
    "local_arc_easy": 2376,
    "local_arc_challenge": 1172,
    "local_piqa": 1838,
    "local_boolq": 3270,
    "local_openbookqa": 500,
    "local_mmlu": 14042,
    "local_wikitext": 62,
}

# lm-eval's MMLU categories (the same four groups as its `mmlu`; the top-level number is size-weighted either way).
MMLU_CATEGORIES = {
    "stem": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
    "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
    "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality "
    "professional_psychology public_relations security_studies sociology us_foreign_policy",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
    "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
    "professional_law world_religions",
}
MMLU_SUBJECTS = {s: cat for cat, subjects in MMLU_CATEGORIES.items() for s in subjects.split()}

_PATH = re.compile(r"@PATH:([^@]+)@")


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The benchmark data directory: ``path``, ``$LAYERPRUNE_DATA_DIR`` or ``../shared/data`` (must exist)."""
    chosen = path or os.environ.get("LAYERPRUNE_DATA_DIR") or REPO.parent / "shared" / "data"
    chosen = Path(chosen).expanduser().resolve()
    if not chosen.is_dir():
        raise FileNotFoundError(
            f"benchmark data directory {chosen} not found; set LAYERPRUNE_DATA_DIR (see benchmarks/tasks/README.md)"
        )
    return chosen


def _render(text: str, root: Path) -> str:
    def absolute(match: re.Match) -> str:
        return json.dumps(str(root / match.group(1)))  # a valid YAML double-quoted scalar and Python literal

    return _PATH.sub(absolute, text)


def _write(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def include_path(data: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """Render every local task for ``data`` into ``out_dir`` (default: a cache dir per data dir); return it."""
    root = data_dir(data)
    if out_dir is None:
        cache = os.environ.get("LAYERPRUNE_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hf-layerprune"
        )
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        out_dir = Path(cache) / "tasks" / digest
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for template in sorted(TEMPLATES.glob("*.tmpl")):
        if template.name.startswith("_"):
            continue
        _write(out / template.name[: -len(".tmpl")], _render(template.read_text(encoding="utf-8"), root))
    _render_mmlu(root, out)
    return out


def _render_mmlu(root: Path, out: Path) -> None:
    template = (TEMPLATES / "_local_mmlu_subject.yaml.tmpl").read_text(encoding="utf-8")
    found = sorted(p.name[: -len("_test.csv")] for p in (root / "mmlu" / "test").glob("*_test.csv"))
    unknown = [s for s in found if s not in MMLU_SUBJECTS]
    if unknown:
        raise ValueError(f"unknown MMLU subject files: {unknown}")
    for subject in found:
        text = (
            template.replace("@SUBJECT_TEXT@", subject.replace("_", " "))
            .replace("@SUBJECT@", subject)
            .replace("@CATEGORY@", MMLU_SUBJECTS[subject])
        )
        _write(out / f"local_mmlu_{subject}.yaml", _render(text, root))
    present = {MMLU_SUBJECTS[s] for s in found}
    for category in MMLU_CATEGORIES:
        if category in present:
            _write(
                out / f"_local_mmlu_{category}.yaml",
                f"group: local_mmlu_{category}\ngroup_alias: {category}\ntask:\n  - local_mmlu_{category}_tasks\n"
                "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 2\n",
            )
    groups = "".join(f"  - local_mmlu_{c}\n" for c in MMLU_CATEGORIES if c in present)
    _write(
        out / "_local_mmlu.yaml",
        "# MMLU test (14042 questions, 57 subjects), 5-shot from the dev split in order (first_n).\n"
        f"group: local_mmlu\ntask:\n{groups}aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
        "metadata:\n  version: 2\n",
    )


def check_tasks(include: str | os.PathLike, tasks: list[str] | None = None) -> dict[str, dict[str, int]]:
    """{task: {"docs": n, "bad_targets": k}}: documents per local task (groups: summed over their sub-tasks) and
    how many multiple-choice documents have a target outside their choices; loaded through lm-eval offline."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(include), include_defaults=False)
    counts = {}
    for name in tasks or list(EXPECTED_DOCS):
        loaded = tm.load([name])
        total = bad = 0
        for task in loaded["tasks"].values():
            docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
            total += len(docs)
            if task.OUTPUT_TYPE == "multiple_choice":
                for doc in docs:
                    target = task.doc_to_target(doc)
                    bad += not (isinstance(target, int) and 0 <= target < len(task.doc_to_choice(doc)))
        counts[name] = {"docs": total, "bad_targets": bad}
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="benchmark data (default: $LAYERPRUNE_DATA_DIR or ../shared/data)")
    parser.add_argument("--out", help="where to render the task YAMLs (default: a cache directory)")
    parser.add_argument("--check", action="store_true", help="load every task and compare its document count")
    args = parser.parse_args(argv)
    try:
        out = include_path(args.data_dir, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(out)
    if args.check:
        bad = 0
        for name, info in check_tasks(out).items():
            ok = info["docs"] == EXPECTED_DOCS[name] and not info["bad_targets"]
            bad += not ok
            print(f"{name:20s} {info['docs']:6d} docs (expected {EXPECTED_DOCS[name]:5d}), "
                  f"{info['bad_targets']} targets out of range: {'ok' if ok else 'MISMATCH'}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
