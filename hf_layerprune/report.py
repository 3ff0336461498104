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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_layerprune import __version__

REPORT_FILENAME = "layerprune.json"
# a JSON array of plain numbers, one per line as indent=2 writes it: kept on one line (per-doc scores, layer scores)
_NUMBER_LIST = re.compile(r"\[\n\s+(-?[\d.eE+-]+(?:,\n\s+-?[\d.eE+-]+)*)\n\s*\]")
FORMAT_VERSION = 1


@dataclass(kw_only=True)
class Section:
    """A typed object of ``layerprune.json``: every key it knows is a field (None when absent), every other key is
    kept in ``other``, so that ``from_dict`` then ``to_dict`` gives back exactly what was read.

    A value whose JSON type does not fit its field (a hand-edited file) is kept in ``other`` too and the field stays
    None: code reading a field can trust its type. ``key_order`` holds the keys as read (None: built by code), so a
    section read from a file is written back with its keys, nulls and order; one built by code writes its fields in
    declaration order, leaving out None unless the field's metadata says ``null=True``. Fields set with ``but``
    are written even when None."""

    other: dict[str, Any] = field(default_factory=dict, repr=False)
    key_order: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def data_fields(cls) -> dict[str, Any]:
        """{field name: resolved type} of the keys this section models."""
        return _hints(cls)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        kwargs, other = {}, {}
        for key, value in data.items():
            tp = cls.data_fields().get(key)
            fits, loaded = _load(tp, value) if tp is not None else (False, None)
            if fits:
                kwargs[key] = loaded
            else:
                other[key] = value
        return cls(**kwargs, other=other, key_order=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        names = self.data_fields()
        out: dict[str, Any] = {}
        for key in self.key_order or ():
            if key in self.other:
                out[key] = self.other[key]
            elif key in names:
                out[key] = _dump(getattr(self, key))
        for f in dataclasses.fields(self):
            if f.name in names and f.name not in out:
                value = getattr(self, f.name)
                if value is not None or (self.key_order is None and f.metadata.get("null")):
                    out[f.name] = _dump(value)
        out.update({k: v for k, v in self.other.items() if k not in out})
        return out

    def but(self, **changes: Any):
        """A copy with ``changes`` (written even when None: they were set)."""
        new = dataclasses.replace(self, **changes)
        if self.key_order is not None:
            new.key_order = self.key_order + tuple(k for k in changes if k not in self.key_order)
        return new

    def get(self, key: str, default: Any = None) -> Any:
        """A key's value as written (a field or a kept key): for keys named at run time (``f"{stem}_before"``)."""
        value = getattr(self, key) if key in self.data_fields() else self.other.get(key)
        return default if value is None else value


def _null(default: Any = None) -> Any:
    """A field written as null when it is None (code-built sections; read ones keep what they read)."""
    return field(default=default, metadata={"null": True})


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in ("other", "key_order")}
    return _HINTS[cls]


def _load(tp: Any, value: Any) -> tuple[bool, Any]:
    """(whether ``value``, read from JSON, fits type ``tp``; the value with its sections typed)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, None
        for arm in args:
            fits, loaded = _load(arm, value)
            if fits:
                return True, loaded
        return False, None
    if isinstance(tp, type) and issubclass(tp, (Section, MappingSection)):
        return (True, tp.from_dict(value)) if isinstance(value, dict) else (False, None)
    if origin is list:
        if not isinstance(value, list):
            return False, None
        items = [_load(args[0] if args else Any, v) for v in value]
        return (True, [v for _, v in items]) if all(ok for ok, _ in items) else (False, None)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return False, None
        items = {k: _load(args[1] if args else Any, v) for k, v in value.items()}
        return (True, {k: v for k, (_, v) in items.items()}) if all(ok for ok, _ in items.values()) else (False, None)
    if tp is float:
        return (not isinstance(value, bool) and isinstance(value, (int, float))), value
    if tp is int:
        return (not isinstance(value, bool) and isinstance(value, int)), value
    return isinstance(value, tp), value


def _dump(value: Any) -> Any:
    if isinstance(value, (Section, MappingSection)):
        return value.to_dict()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(kw_only=True)
class MappingSection:
    """A section that is one mapping of names chosen at run time (library versions, seconds per stage)."""

    items: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(items=dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.items)


# ------------------------------------------------------------------------------------------------ source and cut
@dataclass
class SourceSection:
    """What was pruned (the load stage): flat top-level keys of ``layerprune.json``."""

    base_model: str
    base_revision: str | None = None
    model_type: str | None = None
    dtype: str | None = None
    num_layers_before: int | None = None
    parameters_before: int | None = None


@dataclass(kw_only=True)
class ExportSection(Section):
    """The DeciLM export of a sub-layer cut (sublayer.py)."""

    format: str | None = None
    architecture: str | None = None
    trust_remote_code: bool | None = None
    block_configs: list | None = None
    kv_cache_bytes_per_token: dict[str, Any] | None = None


@dataclass
class CutSection:
    """What was removed (the cut stage; a `replace` healer that puts a layer back returns a new one)."""

    num_layers_after: int
    removed_layers: list[int]
    kept_layers: list[int]
    parameters_after: int | None = None
    route: str | None = "in-memory"  # "in-memory" | "streaming" | "gguf"
    removed_sublayers: dict[str, list[int]] | None = None  # --granularity attention|mlp
    export: ExportSection | None = None  # the DeciLM export of a sub-layer cut


# ------------------------------------------------------------------------------------------------ scoring
@dataclass(kw_only=True)
class CalibrationRecord(Section):
    """The text a stage ran on (calibration.calibration_record): scoring's calibration, healing's data."""

    source: str | None = None
    kind: str | None = None  # "self" | "files" | "hub"
    samples: int | None = None
    seq_len: int | None = None
    seed: int | None = None


@dataclass(kw_only=True)
class ScoresRecord(Section):
    per_layer: list | None = None
    per_unit: list | None = None
    unit: str | None = None  # "attention" | "mlp"
    blocks: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Candidate(Section):
    """One of `auto`'s candidate selections and how it was judged (null: nothing to judge)."""

    metrics: list[str] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    held_out_loss: float | None = _null()
    held_out_kl: float | None = _null()


@dataclass(kw_only=True)
class JudgedWith(Section):
    heal: str | None = None
    objective: str | None = None  # "kl_to_base" since issue 35; absent: the lowest loss won
    held_out_samples: int | None = None
    seq_len: int | None = None


@dataclass(kw_only=True)
class ScoringSection(Section):
    """The select stage: the metric, its scores and the units it selected (`auto`: its candidates)."""

    metric: str | None = None
    options: dict[str, Any] | None = None
    selection: str | None = None
    granularity: str | None = None
    ranking: list | None = None
    scores: ScoresRecord | None = None
    selected: list[int] | None = None
    higher_is_more_important: bool | None = None
    seconds: float | None = None
    calibration: CalibrationRecord | None = None
    chosen_metric: str | None = None
    candidates: list[Candidate] | None = None
    judged_with: JudgedWith | None = _null()


# ------------------------------------------------------------------------------------------------ healing
@dataclass(kw_only=True)
class HealingSection(Section):
    """The heal stage: the healer (or chain, with one record per stage) and what it did. Healers add keys of their
    own (kept in ``other``)."""

    method: str | None = None
    steps: int | None = None
    tokens: int | None = None
    learning_rate: float | None = None
    lora_rank: int | None = None
    targets: Any = None
    runs: list | None = None  # absorb: [{removed, layers, block_mse_before, block_mse_after}]
    data: Any = None  # the healing text: a calibration record (or its source, in old reports)
    loss_before: float | None = None
    loss_after: float | None = None
    kd_before: float | None = None
    kd_after: float | None = None
    hidden_before: float | None = None
    hidden_after: float | None = None
    reverted: bool | None = None
    seconds: float | None = None
    losses: list | None = None
    options: dict[str, Any] | None = None
    stages: list[HealingSection] | None = None  # a chain `linear+distill`: each stage's record

    def with_stage_settings(self) -> "HealingSection":
        """A chain's totals with each stage's own keys filled in (later stages first, the totals over all)."""
        merged: dict[str, Any] = {}
        for stage in self.stages or []:
            merged.update(stage.to_dict())
        return HealingSection.from_dict({**merged, **self.to_dict()})


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass(kw_only=True)
class EvalSettings(Section):
    tasks: list | None = None
    num_fewshot: int | None = None
    limit: Any = None
    batch_size: Any = None
    include_path: Any = None
    perplexity: Any = None
    seq_len: int | None = None
    device: str | None = None
    dtype: str | None = None
    lm_eval_version: str | None = None
    harness: str | None = None
    quantization: dict[str, Any] | None = None


@dataclass(kw_only=True)
class PairedSection(Section):
    """Per-task paired Δ ± SE against the base on the same docs, and the headline over the tasks above baseline."""

    z: float | None = None
    tasks: dict[str, Any] | None = None  # {task: {metric, delta, delta_se, measurable, chance, majority, included, reason}}
    headline: dict[str, Any] | None = None


@dataclass(kw_only=True)
class PerplexitySection(Section):
    base: dict[str, Any] | None = None  # {perplexity, source, seq_len, stride, tokens, max_tokens}
    pruned: dict[str, Any] | None = None
    delta: float | None = None
    ratio: float | None = None


@dataclass(kw_only=True)
class SpeedSection(Section):
    base: dict[str, Any] | None = None  # {prefill_tokens_per_s, decode_tokens_per_s, num_layers, parameters, ...}
    pruned: dict[str, Any] | None = None
    protocol: dict[str, Any] | None = None
    speedup: dict[str, Any] | None = None  # {phase: {median, spread}}
    plausibility: dict[str, Any] | None = None


@dataclass(kw_only=True)
class EvaluationSection(Section):
    """The evaluate stage: lm-eval results of both models ({task: {metric: record}}), their comparison, per-doc
    samples and paired statistics, perplexity, speed and generation fidelity."""

    settings: EvalSettings | None = None
    base: dict[str, Any] | None = None
    pruned: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    samples: Any = None
    paired: PairedSection | None = None
    perplexity: PerplexitySection | None = None
    perplexity_skipped: str | None = None
    speed: SpeedSection | None = None
    generation: dict[str, Any] | None = None  # evaluation/fidelity.py: {settings, summary, ...}
    generation_skipped: str | None = None
    base_scores_from: str | None = None
    command: str | None = None  # `hf-layerprune evaluate ...`
    seconds: float | None = None


# ------------------------------------------------------------------------------------------------ the rest
@dataclass(kw_only=True)
class GgufSection(Section):
    """A GGUF output (gguf_route.py): the file and how it was made."""

    file: str | None = None
    route: str | None = None  # "surgery" | "export"
    type: str | None = None
    architecture: str | None = None
    requantized: dict[str, Any] | None = None
    per_layer_keys: list | None = None


@dataclass(kw_only=True)
class PreflightSection(Section):
    """The memory estimate made before loading (memory.py)."""

    estimate_bytes: int | None = None
    weight_bytes: int | None = None
    stages: dict[str, Any] | None = None
    parts: dict[str, Any] | None = None
    budget_bytes: int | None = None
    budget_from: str | None = None
    device: str | None = None


@dataclass(kw_only=True)
class MemorySection(Section):
    """Peak memory per stage (memory.MemoryMeter)."""

    stages: dict[str, Any] | None = None
    peak_rss_bytes: int | None = None
    peak_cuda_bytes: int | None = None
    weight_bytes: int | None = None
    peak_over_weights: float | None = None


@dataclass(kw_only=True)
class RecipeSection(Section):
    """The Recipe as a dict (recipe.Recipe.to_dict; an older file's recipe as it was). The card shows all of it; the
    fields are the keys the card and provenance read."""

    model: str | None = None
    metric: str | None = None
    heal: str | None = None
    heal_data: str | None = None
    calibration: str | None = None
    perplexity: str | None = None
    include_path: Any = None
    format: str | None = None


class Versions(MappingSection):
    """{library: version} (library_versions)."""


class Timings(MappingSection):
    """{stage: seconds} (finish.Timer)."""


@dataclass(kw_only=True)
class RoundRecord(Section):
    """One round of `--rounds K`: its scoring and healing, the layers it removed (of the base model)."""

    round: int | None = None
    removed_layers: list[int] | None = None
    scoring: ScoringSection | None = None
    healing: HealingSection | None = None


@dataclass(kw_only=True)
class SweepPoint(Section):
    output: str | None = None
    num_layers_after: int | None = None
    removed_layers: list[int] | None = None
    parameters: int | None = None
    mean_accuracy: float | None = None
    perplexity: float | None = None


@dataclass(kw_only=True)
class SweepSection(Section):
    """The depth sweep a variant belongs to (sweep.py): one point per variant and the Pareto plot."""

    points: list[SweepPoint] | None = None
    plot: str | None = None


@dataclass(kw_only=True)
class BaseCard(Section):
    """The base model's license facts (hub.find_base_card), looked up once per run by the composition."""

    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    language: Any = None
    gated: bool | None = None
    source: str | None = None


@dataclass(kw_only=True)
class Provenance(Section):
    """Where the inputs came from (provenance.py): the base model and local input files with their hashes."""

    base_model: dict[str, Any] | None = None
    files: list | None = None


# top-level keys in the order they are written; each belongs to one section (docs/report.md)
_HEADER = ("format_version", "tool", "command")
_SOURCE = tuple(f.name for f in dataclasses.fields(SourceSection))
_CUT = tuple(f.name for f in dataclasses.fields(CutSection))
_SECTIONS = ("preflight", "scoring", "rounds", "healing", "evaluation", "gguf", "recipe", "versions", "timings",
             "memory", "sweep")
_AFTER = ("world_size", "hub", "base_card", "provenance", "gguf_of", "gguf_repo")  # after `other`: "world_size" before


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


def _typed(cls: type, data: dict[str, Any], keys: tuple[str, ...], other: dict[str, Any]) -> dict[str, Any]:
    """{key: typed value} of the `keys` of `data` that fit their field of dataclass `cls`; the others go to `other`."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key in keys:
        if key in data:
            fits, value = _load(hints[key], data[key])
            if fits:
                out[key] = value
            else:
                other[key] = data[key]
    return out


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


def load_report(directory: str | os.PathLike) -> Report:
    """The typed Report of an output folder's ``layerprune.json`` (one-line errors for a damaged file)."""
    return Report.from_dict(read_report(directory))


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


def write_report(directory: str | os.PathLike, report: Report | dict[str, Any]) -> Report:
    """Write ``layerprune.json`` (atomically), local paths replaced by names and hashes (provenance.py); returns the
    report as written (what the card renders)."""
    from hf_layerprune.provenance import portable_report

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
