"""The sections of the run record (report.py): one dataclass per stage's section, and the records inside them.

Each is a ``typed_json.Section``: the fields are the keys this package reads (the card, the compositions, the
summary); any other key a stage, a healer or a newer version writes is kept in ``other``. docs/report.md is the
schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hf_layerprune.report.typed_json import MappingSection, Section, _null


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
    last_word_nll: float | None = None  # the long-range judge (flow/judge.py), since issue 35
    last_word_accuracy: float | None = None


@dataclass(kw_only=True)
class JudgedWith(Section):
    heal: str | None = None
    objective: str | None = None  # "last_word_nll" | "kl_to_base" (issue 35); absent: the lowest loss won
    held_out_samples: int | None = None
    seq_len: int | None = None
    long_range_text: str | None = None  # "last_word_nll": the articles' source (flow/judge.py)
    long_range_docs: int | None = None


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
class MetricResult(Section):
    """One lm-eval metric of one task (evaluation/lm_eval_runner.py): {task: {metric: MetricResult}}."""

    value: float | None = None
    stderr: float | None = None
    n_shot: int | None = None
    limit: Any = None
    samples: int | None = None
    samples_total: int | None = None
    higher_is_better: bool | None = None
    parent: str | None = None  # a group's sub-task: the group's name


@dataclass(kw_only=True)
class PairedTask(Section):
    """One task's main metric, pruned vs base on the same docs (evaluation/paired.py)."""

    metric: str | None = None
    delta: float | None = None
    delta_se: float | None = None
    measurable: bool | None = None
    chance: float | None = None
    majority: float | None = None
    baseline: float | None = None
    included: bool | None = None  # in the headline: the base is clearly above chance/majority
    reason: str | None = None  # why not


@dataclass(kw_only=True)
class Headline(Section):
    """The paired headline over the tasks whose base is clearly above baseline."""

    tasks: list[str] | None = None
    excluded: dict[str, Any] | None = None  # {task: reason}
    base: float | None = None
    pruned: float | None = None
    delta: float | None = None
    delta_se: float | None = None
    retention_pct: float | None = None
    retention_se_pts: float | None = None
    measurable: bool | None = None
    retention_range: list | None = None


@dataclass(kw_only=True)
class PairedSection(Section):
    """Per-task paired Δ ± SE against the base on the same docs, and the headline over the tasks above baseline."""

    z: float | None = None
    tasks: dict[str, PairedTask] | None = None
    headline: Headline | None = None


@dataclass(kw_only=True)
class PerplexityRecord(Section):
    """One model's perplexity (evaluation/perplexity.py)."""

    perplexity: float | None = None
    source: str | None = None  # "wikitext:..." or a text file
    seq_len: int | None = None
    stride: int | None = None
    tokens: int | None = None
    max_tokens: int | None = None  # the text was cut to this many tokens


@dataclass(kw_only=True)
class PerplexitySection(Section):
    base: PerplexityRecord | None = None
    pruned: PerplexityRecord | None = None
    delta: float | None = None
    ratio: float | None = None


@dataclass(kw_only=True)
class SpeedRecord(Section):
    """One model's size and throughput (evaluation/speed.py)."""

    num_layers: int | None = None
    layer_parameters: int | None = None
    parameters: int | None = None
    weights_bytes: int | None = None
    weights_disk_bytes: int | None = None
    kv_cache_bytes_per_token: int | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None  # "cuda_max_allocated" | "cuda_run_peak_above_weights" | "cpu_rss_delta"
    batch_size: int | None = None
    prompt_len: int | None = None
    decode_tokens: int | None = None
    device: str | None = None
    dtype: str | None = None
    torch_threads: int | None = None


@dataclass(kw_only=True)
class SpeedSection(Section):
    base: SpeedRecord | None = None
    pruned: SpeedRecord | None = None
    protocol: dict[str, Any] | None = None
    speedup: dict[str, Any] | None = None  # {phase: {median, spread}}
    plausibility: dict[str, Any] | None = None
    llama_cpp: dict[str, Any] | None = None  # the GGUF output in llama.cpp (evaluation/llama_cpp_speed.py)


@dataclass(kw_only=True)
class EvaluationSection(Section):
    """The evaluate stage: lm-eval results of both models ({task: {metric: record}}), their comparison, per-doc
    samples and paired statistics, perplexity, speed and generation fidelity."""

    settings: EvalSettings | None = None
    base: dict[str, dict[str, MetricResult]] | None = None
    pruned: dict[str, dict[str, MetricResult]] | None = None
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
class FileRecord(Section):
    """A local input (provenance.file_record): a file's name, sha256 and size, or a directory's name and its
    weight/config files' sha256 (or size, past the hashing limit); a Hub base: its id and commit."""

    name: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    files: dict[str, Any] | None = None  # a directory: {file name: sha256 or {"bytes": size}}
    role: str | None = None  # "perplexity text", "calibration text", "healing text"
    hub_id: str | None = None
    commit: str | None = None


@dataclass(kw_only=True)
class Provenance(Section):
    """Where the inputs came from (provenance.py): the base model and local input files with their hashes."""

    base_model: FileRecord | None = None
    files: list[FileRecord] | None = None
