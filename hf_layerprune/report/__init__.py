"""The run record, `layerprune.json`, written beside the weights; the model card is rendered from it alone.

It is a plain JSON object so that other tools can read it without this package. Top-level keys (see
docs/report.md for the full schema); every stage adds its own section and never rewrites another's:

- ``format_version`` (int), ``tool`` ({name, version}), ``command`` (the exact CLI line, token-free)
- ``base_model`` (Hub id, local path or GGUF path as given), ``base_revision`` (commit sha or null),
  ``model_type``, ``dtype``
- ``world_size`` (int, only when several processes ran: torchrun / accelerate launch)
- ``granularity`` ("block" | "attention" | "mlp"), ``num_layers_before``, ``num_layers_after``,
  ``removed_layers`` and ``kept_layers`` (0-based indices into the base model),
  ``removed_sublayers`` ({"attention": [...], "mlp": [...]} for sub-layer pruning, else absent)
- ``parameters_before``, ``parameters_after``
- ``recipe``: the Recipe as a dict (reproduces the run)
- ``scoring``: {metric, selection, granularity, calibration: {...}, scores: {...}, ...}   (scoring stage)
- ``healing``: {method, steps, tokens, seconds, losses: [...], ...}                           (healing stage)
- ``evaluation``: {settings, base: {...}, pruned: {...}, comparison, samples (per-doc scores of both), paired
  (per-task Δ ± paired SE, chance/majority, headline), perplexity, speed ({base, pruned, protocol, speedup,
  plausibility})}                                                                              (evaluation stage)
- ``versions``: library versions; ``timings``: seconds per stage
- ``provenance``: the base model as Hub id + commit or local file name + sha256, and the local input files
  (provenance.py). No absolute path of the machine is written: ``write_report`` passes every report through
  ``provenance.portable_report``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_layerprune import __version__
from hf_layerprune.runtime.outputs import REPORT_FILENAME  # noqa: F401  (defined where an output is recognised by it)
from hf_layerprune.report.sections import (
    BaseCard,
    CalibrationRecord,
    Candidate,
    CutSection,
    EvalSettings,
    EvaluationSection,
    ExportSection,
    FileRecord,
    GgufSection,
    HealingSection,
    JudgedWith,
    MemorySection,
    MetricResult,
    Headline,
    PairedSection,
    PairedTask,
    PerplexityRecord,
    PerplexitySection,
    PreflightSection,
    Provenance,
    RecipeSection,
    RoundRecord,
    ScoresRecord,
    ScoringSection,
    SourceSection,
    SpeedRecord,
    SpeedSection,
    SweepPoint,
    SweepSection,
    Timings,
    Versions,
)
from hf_layerprune.report.typed_json import MappingSection, Section, _dump, _typed

__all__ = [  # the sections are defined in sections.py and read from here, beside the Report that holds them
    "BaseCard", "CalibrationRecord", "Candidate", "CutSection", "EvalSettings", "EvaluationSection",
    "ExportSection", "FileRecord", "GgufSection", "HealingSection", "JudgedWith", "MappingSection", "MemorySection",
    "MetricResult", "Headline", "PairedSection", "PairedTask", "PerplexityRecord", "PerplexitySection",
    "PreflightSection", "Provenance", "RecipeSection", "Report", "RoundRecord", "ScoresRecord", "ScoringSection",
    "Section", "SourceSection", "SpeedRecord", "SpeedSection", "SweepPoint", "SweepSection", "Timings", "Versions",
    "library_versions", "load_report", "read_report", "write_report",
]
# a JSON array of plain numbers, one per line as indent=2 writes it: kept on one line (per-doc scores, layer scores)
_NUMBER_LIST = re.compile(r"\[\n\s+(-?[\d.eE+-]+(?:,\n\s+-?[\d.eE+-]+)*)\n\s*\]")
FORMAT_VERSION = 1


# top-level keys in the order they are written; each belongs to one section (docs/report.md)
_HEADER = ("format_version", "tool", "command")
_SOURCE = tuple(f.name for f in dataclasses.fields(SourceSection))
_CUT = tuple(f.name for f in dataclasses.fields(CutSection))
_SECTIONS = ("preflight", "scoring", "rounds", "healing", "evaluation", "gguf", "recipe", "versions", "timings",
             "memory", "sweep")
# written after the stage sections: world_size, then the keys kept in `other`, then the rest
_AFTER = ("world_size", "hub", "base_card", "provenance", "gguf_of", "gguf_repo")


@dataclass
class Report:
    """The run record: one typed section per stage (source, scoring, cut, healing, evaluation, output), serialised to
    the flat ``layerprune.json`` schema (format_version 1) by ``to_dict`` and read back, from any older file, by
    ``from_dict`` (keys it does not know kept in ``other`` and in each section's ``other``). Stages return their
    section; only the composition (pipeline.py, sweep.py) assigns them."""

    source: SourceSection
    command: str | None = None
    granularity: str = "block"
    cut: CutSection | None = None
    preflight: PreflightSection | None = None  # memory estimate before loading (memory.py)
    scoring: ScoringSection | None = None
    rounds: list[RoundRecord] | None = None  # --rounds: scoring (and healing) of each round
    healing: HealingSection | None = None
    evaluation: EvaluationSection | None = None
    gguf: GgufSection | None = None  # a GGUF output (gguf_route.py)
    recipe: RecipeSection | None = None
    versions: Versions | None = None
    timings: Timings | None = None
    memory: MemorySection | None = None
    sweep: SweepSection | None = None  # added to every variant of a sweep
    world_size: int | None = None  # only when several processes ran
    hub: dict[str, Any] | None = None  # {repo_id, ...} when published
    base_card: BaseCard | None = None  # the base model's license, looked up once by the composition
    provenance: Provenance | None = None  # written by write_report (provenance.py)
    gguf_of: str | None = None  # the GGUF's own repo: the pruned repo it was made from
    gguf_repo: str | None = None  # the pruned repo: where its GGUF is published
    format_version: int = FORMAT_VERSION
    tool: dict[str, str] = field(default_factory=lambda: {"name": "hf-layerprune", "version": __version__})
    other: dict[str, Any] = field(default_factory=dict)  # keys written by other code or a newer version
    base_card_looked_up: bool = field(default=False, repr=False, compare=False)  # not written: finish.look_up_base_card

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format_version": self.format_version, "tool": self.tool, "command": self.command}
        source = dataclasses.asdict(self.source)
        out.update(base_model=source.pop("base_model"), base_revision=source.pop("base_revision"),
                   granularity=self.granularity)
        out.update({k: v for k, v in source.items() if v is not None})
        if self.cut is not None:
            cut = {f.name: getattr(self.cut, f.name) for f in dataclasses.fields(self.cut)}
            out.update({k: _dump(v) for k, v in cut.items() if v is not None})
        out.update({k: _dump(getattr(self, k)) for k in _SECTIONS if getattr(self, k) is not None})
        if self.world_size is not None:
            out["world_size"] = self.world_size
        out.update(self.other)  # a key read with a value of the wrong type keeps it
        out.update({k: _dump(getattr(self, k)) for k in _AFTER if getattr(self, k) is not None})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """A report from ``layerprune.json`` (any format_version so far: missing keys stay None; a value of the
        wrong type is kept in ``other`` and its field left None)."""
        other: dict[str, Any] = {}
        typed = _typed(Report, data, (*_SECTIONS, *_AFTER, "command"), other)
        cut = None
        if isinstance(data.get("removed_layers"), list) and isinstance(data.get("kept_layers"), list):
            values = {"num_layers_after": len(data["kept_layers"]), "route": None,  # an older file without them
                      **_typed(CutSection, data, _CUT, other)}
            cut = CutSection(**values)
        elif any(k in data for k in _CUT):
            other.update({k: data[k] for k in _CUT if k in data})
        source = {"base_model": None, **_typed(SourceSection, data, _SOURCE, other)}
        known = {*_HEADER, *_SOURCE, *_CUT, *_SECTIONS, *_AFTER, "granularity"}
        other.update({k: v for k, v in data.items() if k not in known})
        return cls(
            source=SourceSection(**source), granularity=data.get("granularity") or "block", cut=cut, **typed,
            format_version=data.get("format_version", FORMAT_VERSION),
            tool=data.get("tool") or {"name": "hf-layerprune", "version": "unknown"},
            other=other,
        )




def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hf-layerprune", "torch", "transformers", "huggingface_hub", "peft", "lm_eval", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def read_report(directory: str | os.PathLike) -> dict[str, Any]:
    """``layerprune.json`` as its JSON object, its sections' types checked (``Report.from_dict`` gives the typed
    sections; ``load_report`` both)."""
    path = Path(directory) / REPORT_FILENAME
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as exc:  # empty, not UTF-8, not JSON, nested too deeply
        from hf_layerprune.runtime.errors import CheckpointError

        if isinstance(exc, UnicodeDecodeError):
            text = "not UTF-8 text"
        elif isinstance(exc, json.JSONDecodeError):
            text = f"not valid JSON ({exc})"
        else:
            text = str(exc).splitlines()[0] if str(exc) else "nested too deeply"
        raise CheckpointError(f"cannot read {path}: {text}") from None
    check_report_types(report, path)
    return report


def load_report(directory: str | os.PathLike) -> Report:
    """The typed Report of an output folder's ``layerprune.json`` (one-line errors for a damaged file)."""
    return Report.from_dict(read_report(directory))


SECTION_KEYS = ("scoring", "healing", "evaluation", "export", "recipe", "gguf", "sweep", "timings", "memory",
                "preflight", "versions", "removed_sublayers")
LIST_KEYS = ("removed_layers", "kept_layers")
NUMBER_KEYS = ("num_layers_before", "num_layers_after", "parameters_before", "parameters_after", "format_version")


def check_report_types(report: Any, path: Path) -> None:
    """The report's sections have the types every reader assumes; one line naming the first that does not."""
    from hf_layerprune.runtime.errors import CheckpointError

    def bad(key: str, value: Any, wanted: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key} is {value!r:.60}, not {wanted}; the file is damaged or hand-edited")

    if not isinstance(report, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    for key in SECTION_KEYS:
        if report.get(key) is not None and not isinstance(report[key], dict):
            raise bad(key, report[key], "an object")
    for key in LIST_KEYS:
        value = report.get(key)
        if value is not None and not (isinstance(value, list) and all(type(i) is int for i in value)):
            raise bad(key, value, "a list of layer indices")
    for key in NUMBER_KEYS:
        value = report.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(key, value, "a number")
    for key in ("base_model", "base_revision"):
        if report.get(key) is not None and not isinstance(report[key], str):
            raise bad(key, report[key], "a string")


def write_report(directory: str | os.PathLike, report: Report | dict[str, Any]) -> Report:
    """Write ``layerprune.json`` (atomically), local paths replaced by names and hashes (provenance.py); returns the
    report as written (what the card renders)."""
    from hf_layerprune.report.provenance import portable_report

    data = portable_report(report.to_dict() if isinstance(report, Report) else report)
    path = Path(directory) / REPORT_FILENAME
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n")
    os.replace(tmp, path)
    return Report.from_dict(json.loads(text))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
