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
from hf_layerprune.outputs import REPORT_FILENAME  # noqa: F401  (defined where an output is recognised by it)

# a JSON array of plain numbers, one per line as indent=2 writes it: kept on one line (per-doc scores, layer scores)
_NUMBER_LIST = re.compile(r"\[\n\s+(-?[\d.eE+-]+(?:,\n\s+-?[\d.eE+-]+)*)\n\s*\]")
FORMAT_VERSION = 1


@dataclass
class SourceSection:
    """What was pruned (the load stage): flat top-level keys of ``layerprune.json``."""

    base_model: str
    base_revision: str | None = None
    model_type: str | None = None
    dtype: str | None = None
    num_layers_before: int | None = None
    parameters_before: int | None = None


@dataclass
class CutSection:
    """What was removed (the cut stage; a `replace` healer that puts a layer back returns a new one)."""

    num_layers_after: int
    removed_layers: list[int]
    kept_layers: list[int]
    parameters_after: int | None = None
    route: str = "in-memory"  # "in-memory" | "streaming" | "gguf"
    removed_sublayers: dict[str, list[int]] | None = None  # --granularity attention|mlp
    export: dict[str, Any] | None = None  # the DeciLM export of a sub-layer cut

    def as_healing_input(self, num_layers_before: int) -> dict[str, Any]:
        """The mapping healers read (removed/kept layers of the base model); a copy they may update."""
        return {"removed_layers": list(self.removed_layers), "kept_layers": list(self.kept_layers),
                "num_layers_before": num_layers_before, "num_layers_after": self.num_layers_after,
                "parameters_after": self.parameters_after}

    def updated_by(self, healing_input: dict[str, Any]) -> "CutSection":
        """This cut after a healer changed the layer lists (`replace` keeps the block's first layer)."""
        return dataclasses.replace(self, **{k: healing_input[k] for k in
                                            ("removed_layers", "kept_layers", "num_layers_after", "parameters_after")})


# top-level keys in the order they are written; each belongs to one section (docs/report.md)
_HEADER = ("format_version", "tool", "command")
_SOURCE = tuple(f.name for f in dataclasses.fields(SourceSection))
_CUT = tuple(f.name for f in dataclasses.fields(CutSection))
_SECTIONS = ("preflight", "scoring", "rounds", "healing", "evaluation", "gguf", "recipe", "versions", "timings",
             "memory", "sweep")


@dataclass
class Report:
    """The run record: one section per stage (source, scoring, cut, healing, evaluation, output), serialised to
    the flat ``layerprune.json`` schema (format_version 1) by ``to_dict`` and read back, from any older file, by
    ``from_dict``. Stages return their section; only the composition (pipeline.py, sweep.py) assigns them."""

    source: SourceSection
    command: str | None = None
    granularity: str = "block"
    cut: CutSection | None = None
    preflight: dict[str, Any] | None = None  # memory estimate before loading (memory.py)
    scoring: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] | None = None  # --rounds: scoring (and healing) of each round
    healing: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    gguf: dict[str, Any] | None = None  # a GGUF output (gguf_route.py)
    recipe: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    timings: dict[str, float] | None = None
    memory: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None  # added to every variant of a sweep
    format_version: int = FORMAT_VERSION
    tool: dict[str, str] = field(default_factory=lambda: {"name": "hf-layerprune", "version": __version__})
    other: dict[str, Any] = field(default_factory=dict)  # keys written by other code (provenance, base_card) or newer

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format_version": self.format_version, "tool": self.tool, "command": self.command}
        source = dataclasses.asdict(self.source)
        out.update(base_model=source.pop("base_model"), base_revision=source.pop("base_revision"),
                   granularity=self.granularity)
        out.update({k: v for k, v in source.items() if v is not None})
        if self.cut is not None:
            out.update({k: v for k, v in dataclasses.asdict(self.cut).items() if v is not None})
        out.update({k: getattr(self, k) for k in _SECTIONS if getattr(self, k) is not None})
        out.update(self.other)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """A report from ``layerprune.json`` (any format_version so far: missing keys stay None)."""
        cut = None
        if "removed_layers" in data and "kept_layers" in data:
            cut = CutSection(**{k: data[k] for k in _CUT if k in data and k != "num_layers_after"},
                             num_layers_after=data.get("num_layers_after", len(data["kept_layers"])))
        known = {*_HEADER, *_SOURCE, *_CUT, *_SECTIONS, "granularity"}
        return cls(
            source=SourceSection(**{k: data.get(k) for k in _SOURCE}),
            command=data.get("command"), granularity=data.get("granularity") or "block", cut=cut,
            **{k: data.get(k) for k in _SECTIONS},
            format_version=data.get("format_version", FORMAT_VERSION),
            tool=data.get("tool") or {"name": "hf-layerprune", "version": "unknown"},
            other={k: v for k, v in data.items() if k not in known},
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
    """``layerprune.json`` as its JSON object (``Report.from_dict`` gives the typed sections)."""
    path = Path(directory) / REPORT_FILENAME
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as exc:  # empty, not UTF-8, not JSON, nested too deeply
        from hf_layerprune.errors import CheckpointError

        if isinstance(exc, UnicodeDecodeError):
            text = "not UTF-8 text"
        elif isinstance(exc, json.JSONDecodeError):
            text = f"not valid JSON ({exc})"
        else:
            text = str(exc).splitlines()[0] if str(exc) else "nested too deeply"
        raise CheckpointError(f"cannot read {path}: {text}") from None
    check_report_types(report, path)
    return report


SECTION_KEYS = ("scoring", "healing", "evaluation", "export", "recipe", "gguf", "sweep", "timings", "memory",
                "preflight", "versions", "removed_sublayers")
LIST_KEYS = ("removed_layers", "kept_layers")
NUMBER_KEYS = ("num_layers_before", "num_layers_after", "parameters_before", "parameters_after", "format_version")


def check_report_types(report: Any, path: Path) -> None:
    """The report's sections have the types every reader assumes; one line naming the first that does not."""
    from hf_layerprune.errors import CheckpointError

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


def write_report(directory: str | os.PathLike, report: Report | dict[str, Any]) -> Path:
    """Write ``layerprune.json`` (atomically), local paths replaced by names and hashes (provenance.py)."""
    from hf_layerprune.provenance import portable_report

    if isinstance(report, Report):
        report = report.to_dict()
    _remember_base_card(report)
    report = portable_report(report)
    path = Path(directory) / REPORT_FILENAME
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(report, indent=2, sort_keys=False, default=_json_default)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n")
    os.replace(tmp, path)
    return path


def _remember_base_card(report: dict[str, Any]) -> None:
    """A local base model's license must be read before its path is dropped from the report."""
    base = report.get("base_model")
    if report.get("base_card") or not isinstance(base, str) or not os.path.exists(os.path.expanduser(base)):
        return
    from hf_layerprune.hub import find_base_card

    try:
        info = find_base_card(report, online=False)
    except Exception:  # noqa: BLE001 - an unreadable card only means "license unknown"
        info = None
    if info and info.get("license"):
        report["base_card"] = {k: v for k, v in info.items() if not k.startswith("_")}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
