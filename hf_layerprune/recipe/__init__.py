"""The Recipe: everything a run needs, built from CLI flags or loaded from YAML (`--recipe run.yaml`).

It is stored verbatim in `layerprune.json` so that any run can be reproduced with one command.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hf_layerprune.runtime.errors import ConfigError

GRANULARITIES = ("block", "attention", "mlp")

# Bounds on sizes, checked before any work (one line naming the bound): far above any real run, low enough that a
# typo (an extra zero group, 10**12) is refused instead of hanging in a pre-flight or dying for memory.
MAX_LAYERS = 100_000
MAX_CALIBRATION_TOKENS = 100_000_000  # calibration samples x sequence length
UPPER_BOUNDS = {"drop": MAX_LAYERS, "rounds": MAX_LAYERS, "calibration_samples": 10_000_000, "seq_len": 1 << 20,
                "batch_size": 1 << 16, "heal_steps": 10_000_000, "heal_tokens": 10**11, "lora_rank": 1 << 16,
                "limit": 10_000_000, "num_fewshot": 1_000, "perplexity_tokens": 10**10}

# The defaults a recipe resolves to (`resolve_defaults`), chosen from benchmarks/RESULTS.md on SmolLM2-135M-Instruct:
# - metric: no single metric was best at every depth (angular + linear: 93.0% retention at drop 6 but 78.5% and
#   WikiText-2 perplexity 2379 at drop 9), so `auto` (auto.py: a selection strategy above scoring) compares the
#   selections of angular, cosine and bi after the default healer's closed-form stand-in on held-out calibration
#   text and keeps the best. Sub-layers: angular and cosine compare block boundaries only; `bi` scores any unit from
#   the one capture pass (ShortGPT's signal, used per sub-layer by LLM-Drop).
# - healer: `absorb` against `linear` (the previous default): the same retention at drop 6 and more at drop 9, with a
#   far lower perplexity at both depths (docs/healing.md). The closed-form healers fold a correction for removed
#   *whole* layers; sub-layer cuts are left unhealed unless asked (`--heal lora|qlora|distill` train on the DeciLM
#   model).
AUTO = "auto"
DEFAULT_METRIC = AUTO
DEFAULT_SUBLAYER_METRIC = "bi"
DEFAULT_HEALER = "absorb"
DEFAULT_SUBLAYER_HEALER = "none"
# `--load-in-4bit` (the route for models larger than the device in 16-bit): Gromov et al.'s own recipe, angular
# distance and QLoRA. `auto` and `absorb` change 16-bit weights (a fused down-projection, trained layers), which a
# 4-bit model does not have; the adapter QLoRA trains is merged into the original shards when they are written.
DEFAULT_4BIT_METRIC = "angular"
DEFAULT_4BIT_HEALER = "qlora"


def default_metric(granularity: str = "block") -> str:
    return DEFAULT_METRIC if granularity == "block" else DEFAULT_SUBLAYER_METRIC


def default_healer(granularity: str = "block") -> str:
    return DEFAULT_HEALER if granularity == "block" else DEFAULT_SUBLAYER_HEALER


def option(default: Any = None, help: str = "", panel: str = "Pruning", flag: str | None = None,
           factory: Any = None) -> Any:
    """A Recipe field that is also a CLI option of `prune`, `push` and `sweep` (cli/options.py builds them from
    this metadata): its help text, help panel, and flag spelling for booleans."""
    meta = {"help": help, "panel": panel, "flag": flag}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class Recipe:
    """Everything that decides a run's output, typed and checked when built (from the CLI, a YAML recipe or code);
    `to_dict` is the report's `recipe` section. Fields made with `option(...)` are the CLI's options."""

    model: str = ""
    revision: str | None = option(help="Hub revision (branch, tag or commit) of MODEL.")
    output_dir: str | None = None
    overwrite: bool = False
    # what to remove
    drop: int | None = option(help="Number of layers (or sub-layers) to remove, chosen by --metric.")
    layers: list[int] | None = option(help="Exact 0-based indices to remove, e.g. 3,4,5 or 20-27.")
    target: str | None = option(help="A budget instead of a depth: params=F keeps the fraction F of the parameters, "
                                     "kv=F of the KV cache; whole-layer and attention-only removals are mixed to meet "
                                     "it and the candidate plans compared by KL to the base on held-out text "
                                     "(budget.py; a plan with attention-only removals is a sub-layer export).")
    granularity: str = option("block", help="Unit to remove: block (default), attention or mlp.")
    metric: str | None = option(help="Importance metric used by --drop (see `analyze --help`).")
    selection: str | None = option(help="contiguous | topk | greedy (default: the metric's own).")
    protect: list[str | int] = option(factory=list, help="Layers never removed: first,last and/or indices.")
    rounds: int = option(1, help="Iterative prune -> heal -> rescore in K rounds (deep cuts).")
    # calibration
    calibration: str = option("self", help="Calibration text: self, a Hub dataset id[:config[:split]], or files.",
                              panel="Calibration")
    calibration_samples: int = option(32, help="Number of calibration sequences.", panel="Calibration")
    seq_len: int = option(256, help="Tokens per calibration sequence.", panel="Calibration")
    seed: int = option(0, help="Random seed for sampling and training.", panel="Calibration")
    text_column: str | None = option(help="Text column of a calibration dataset.", panel="Calibration")
    # healing
    heal: str | None = option(help="Healing method (listed from the healer registry when the help is shown); chain "
                                   "with +.", panel="Healing")
    heal_steps: int | None = option(help="Optimizer steps for trained healers.", panel="Healing")
    heal_tokens: int | None = option(help="Token budget for trained healers (alternative to --heal-steps).",
                                     panel="Healing")
    heal_budget: str | None = option(help="Wall-clock training time for trained healers, e.g. 20m, 90s or 1h: it sets "
                                          "their steps (a schedule over time; stops within one step of it).",
                                     panel="Healing")
    heal_data: str | None = option(help="Healing text source (default: the calibration source).", panel="Healing")
    learning_rate: float | None = option(help="Learning rate for trained healers.", panel="Healing")
    lora_rank: int | None = option(help="LoRA rank.", panel="Healing")
    lora_targets: list[str] | None = option(help="Comma-separated module names LoRA adapts, or all-linear (every "
                                                 "linear module but the output head).", panel="Healing")
    # evaluation
    evaluate: bool = option(True, help="Benchmark base and pruned model (lm-eval, perplexity, speed).",
                            flag="--eval/--no-eval", panel="Evaluation")
    tasks: list[str] | None = option(help="Comma-separated lm-eval tasks.", panel="Evaluation")
    limit: int | None = option(help="Documents per task (for quick runs).", panel="Evaluation")
    num_fewshot: int | None = option(help="Few-shot examples per task.", panel="Evaluation")
    batch_size: int = option(8, help="Evaluation batch size.", panel="Evaluation")
    include_path: str | None = option(help="Directory of extra lm-eval task YAMLs (offline tasks).", panel="Evaluation")
    perplexity: str | None = option(help="Perplexity text: wikitext (default) or a local file.", panel="Evaluation")
    perplexity_tokens: int | None = option(help="Evaluate perplexity on at most this many tokens.", panel="Evaluation")
    # runtime
    dtype: str = option("auto", help="auto, float32, bfloat16 or float16.", panel="Runtime")
    device: str | None = option(help="cpu, cuda, cuda:1 ... (default: the GPU when there is one, else cpu).",
                                panel="Runtime")
    allow_pickle: bool = option(False, help="Allow loading pickle .bin checkpoints.", flag="--allow-pickle",
                                panel="Runtime")
    trust_remote_code: bool = option(False, help="Let transformers run the checkpoint's own modeling code "
                                                 "(auto_map). Only for code you have read.",
                                     flag="--trust-remote-code", panel="Runtime")
    load_in_4bit: bool = option(False, help="Load the model in 4-bit NF4 (bitsandbytes) to score, heal (qlora) and "
                                            "evaluate it; the output is written from the original shards with the "
                                            "adapter merged (models larger than the device in 16-bit).",
                                flag="--load-in-4bit", panel="Runtime")
    offload: bool = option(False, help="Score one layer at a time from disk (models larger than memory).",
                           flag="--offload", panel="Runtime")
    device_map: str | None = option(help="accelerate device map for loading, e.g. auto (several GPUs).",
                                    panel="Runtime")
    max_shard_size: str = option("5GB", help="Largest safetensors shard, e.g. 5GB.", panel="Runtime")
    # output
    format: str | None = option(help="Output: safetensors, gguf or both (default: both for a .gguf MODEL, else "
                                     "safetensors).", panel="Output")
    gguf_type: str | None = option(help="GGUF export type of a transformers model: BF16 (default) or Q8_0.",
                                   panel="Output")

    def __post_init__(self) -> None:
        self.validate_basic()

    def validate_basic(self) -> None:
        """Every value has its field's type (strings are not booleans or numbers); cheap range checks."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ConfigError(f"recipe value {f.name}: {value!r} is not {_describe_type(hints[f.name])}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown --granularity {self.granularity!r}; use one of {', '.join(GRANULARITIES)}")
        for name in ("calibration_samples", "seq_len", "rounds", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        for name in ("heal_steps", "heal_tokens", "lora_rank", "limit", "perplexity_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        parse_duration(self.heal_budget)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"--num-fewshot must not be negative (got {self.num_fewshot})")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be positive (got {self.learning_rate})")
        if self.learning_rate is not None and not math.isfinite(self.learning_rate):
            raise ConfigError(f"--learning-rate must be a finite number (got {self.learning_rate})")
        for name, bound in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value > bound:
                raise ConfigError(f"--{name.replace('_', '-')} {value} is more than the bound {bound:,}")
        tokens = self.calibration_samples * self.seq_len
        if tokens > MAX_CALIBRATION_TOKENS:
            raise ConfigError(f"--calibration-samples {self.calibration_samples} x --seq-len {self.seq_len} = {tokens:,} "
                              f"calibration tokens, more than the bound {MAX_CALIBRATION_TOKENS:,}")
        if self.layers and max(self.layers) >= MAX_LAYERS:
            raise ConfigError(f"--layers: index {max(self.layers)} is beyond any model (at most {MAX_LAYERS:,} layers)")

    def validate_target(self) -> None:
        """Exactly one of drop/layers/target; drop >= 1. Range checks against the model happen at selection time."""
        if self.drop is None and not self.layers and self.target is None:
            raise ConfigError("say what to remove: give --drop N or --layers i,j,k (or --target params=F)")
        if sum(x is not None and x != [] for x in (self.drop, self.layers, self.target)) > 1:
            raise ConfigError("give one of --drop, --layers and --target, not several")
        if self.target is not None:
            parse_target(self.target)
            if self.granularity != "block":
                raise ConfigError("--target mixes whole-layer and attention-only removals itself; drop --granularity")
        if self.drop is not None and self.drop < 1:
            raise ConfigError(f"--drop must be at least 1 (got {self.drop})")

    def resolve_defaults(self) -> "Recipe":
        """Fill the choices left to the tool (the default healer) so that the report names what really ran. With
        --target the default healer depends on the plan chosen (budget.py fills it then)."""
        if self.heal is None and self.target is None:
            self.heal = DEFAULT_4BIT_HEALER if self.load_in_4bit else default_healer(self.granularity)
        if self.metric is None and self.drop and not self.layers:
            self.metric = self.metric_name
        return self

    @property
    def metric_name(self) -> str:
        """The metric (or `auto`, or a config rule) this recipe selects with: its own, else the default."""
        if self.metric:
            return self.metric
        return DEFAULT_4BIT_METRIC if self.load_in_4bit else default_metric(self.granularity)

    def to_dict(self) -> dict[str, Any]:
        """Every field; the ones added since reports were first written (LATER_FIELDS) only when set, so that the
        record of a run that does not use them is what it was."""
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in LATER_FIELDS and v is None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        data = {k.replace("-", "_"): v for k, v in data.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown recipe key(s): {', '.join(unknown)}")
        if isinstance(data.get("layers"), str):  # `layers: 20-27` reads like the CLI flag
            data["layers"] = parse_layers(data["layers"])
        elif isinstance(data.get("layers"), int) and not isinstance(data["layers"], bool):  # `layers: 1`, as --layers 1
            data["layers"] = [data["layers"]]
        for key in LIST_FIELDS:
            if isinstance(data.get(key), str):
                data[key] = split_list(data[key])
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"recipe file not found: {path}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {path} is not UTF-8 text") from None
        except (yaml.YAMLError, RecursionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else "nested too deeply"
            raise ConfigError(f"recipe {path} is not valid YAML: {first}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a mapping of option names to values")
        odd = [k for k in data if not isinstance(k, str)]
        if odd:
            raise ConfigError(f"recipe {path}: key {odd[0]!r} is not an option name")
        return cls.from_dict({k.replace("-", "_"): v for k, v in data.items()})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


LIST_FIELDS = ("protect", "tasks", "lora_targets")  # comma-separated on the command line


def split_list(text: str) -> list[str]:
    return [item.strip() for item in str(text).split(",") if item.strip()]


def _matches(value: Any, hint: Any) -> bool:
    """Does `value` have type `hint` (the Recipe's annotations: scalars, Optional, unions and lists)?"""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, hint)


def _describe_type(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe_type(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


TARGET_KINDS = ("params", "kv")
LATER_FIELDS = ("target",)


def parse_target(text: str) -> tuple[str, float]:
    """`params=0.8` -> ("params", 0.8): keep that fraction of the parameters (or of the KV cache, `kv=`)."""
    kind, eq, value = str(text).partition("=")
    kind = kind.strip().lower()
    if kind == "speed":
        raise ConfigError("--target speed= is not supported: decode speed is measured, not predicted; give params=F "
                          "or kv=F and read the measured speed-up on the card")
    try:
        fraction = float(value)
    except ValueError:
        fraction = float("nan")
    if not eq or kind not in TARGET_KINDS or not 0 < fraction < 1:
        raise ConfigError(f"cannot read --target {text!r}: give params=F or kv=F with 0 < F < 1 (the fraction kept)")
    return kind, fraction


def parse_duration(text: str | None, what: str = "--heal-budget") -> float | None:
    """Seconds of "90s", "20m", "1.5h" or a plain number of seconds; None for None."""
    if text is None:
        return None
    m = DURATION.match(str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"cannot read {what} {text!r}: give a positive time such as 90s, 20m or 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def parse_layers(text: str | None) -> list[int] | None:
    """`3,4,5` or `3-5,9` -> [3, 4, 5, 9] (0-based). Duplicates are kept so that validation can refuse them."""
    if text is None or text == "":
        return None
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            span = re.fullmatch(r"(\d+)-(\d+)", part)
            first, last = (int(span[1]), int(span[2])) if span else (int(part), int(part))
        except (ValueError, TypeError):
            raise ConfigError(f"cannot read --layers {text!r}: use 0-based indices like 3,4,5 or 3-5") from None
        if last >= MAX_LAYERS:
            raise ConfigError(f"--layers {text}: index {last} is beyond any model (at most {MAX_LAYERS:,} layers)")
        out.extend(range(first, last + 1))
    return out
