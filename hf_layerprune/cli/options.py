"""The options shared by `prune`, `push` and `sweep`, declared once and added to each command's signature.

Every option defaults to None ("not given") so that a `--recipe run.yaml` value is only overridden by a flag
the user actually typed; the Recipe's own defaults fill the rest.
"""


import functools
import inspect
import shlex
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from hf_layerprune.recipe import Recipe

P = inspect.Parameter


def _opt(name: str, annotation: Any, help: str, flag: Optional[str] = None, panel: str = "Pruning") -> P:
    flags = [flag] if flag else []
    return P(name, P.KEYWORD_ONLY, default=None,
             annotation=Annotated[annotation, typer.Option(*flags, help=help, rich_help_panel=panel, show_default=False)])


RECIPE_OPTIONS: list[P] = [
    _opt("revision", Optional[str], "Hub revision (branch, tag or commit) of MODEL."),
    _opt("drop", Optional[int], "Number of layers (or sub-layers) to remove, chosen by --metric."),
    _opt("layers", Optional[str], "Exact 0-based indices to remove, e.g. 3,4,5 or 20-27."),
    _opt("granularity", Optional[str], "Unit to remove: block (default), attention or mlp."),
    _opt("metric", Optional[str], "Importance metric used by --drop (see `analyze --help`)."),
    _opt("selection", Optional[str], "contiguous | topk | greedy (default: the metric's own)."),
    _opt("protect", Optional[str], "Layers never removed: first,last and/or indices."),
    _opt("rounds", Optional[int], "Iterative prune -> heal -> rescore in K rounds (deep cuts)."),
    _opt("calibration", Optional[str], "Calibration text: self, a Hub dataset id[:config[:split]], or files.", panel="Calibration"),
    _opt("calibration_samples", Optional[int], "Number of calibration sequences.", panel="Calibration"),
    _opt("seq_len", Optional[int], "Tokens per calibration sequence.", panel="Calibration"),
    _opt("seed", Optional[int], "Random seed for sampling and training.", panel="Calibration"),
    _opt("text_column", Optional[str], "Text column of a calibration dataset.", panel="Calibration"),
    _opt("heal", Optional[str], "Healing method: none, lora, qlora, distill, replace, absorb, bias, linear, projection; chain with + (linear+absorb).", panel="Healing"),
    _opt("heal_steps", Optional[int], "Optimizer steps for trained healers.", panel="Healing"),
    _opt("heal_tokens", Optional[int], "Token budget for trained healers (alternative to --heal-steps).", panel="Healing"),
    _opt("heal_data", Optional[str], "Healing text source (default: the calibration source).", panel="Healing"),
    _opt("learning_rate", Optional[float], "Learning rate for trained healers.", panel="Healing"),
    _opt("lora_rank", Optional[int], "LoRA rank.", panel="Healing"),
    _opt("lora_targets", Optional[str], "Comma-separated module names LoRA adapts, or all-linear (every linear module but the output head).", panel="Healing"),
    _opt("evaluate", Optional[bool], "Benchmark base and pruned model (lm-eval, perplexity, speed).", "--eval/--no-eval", panel="Evaluation"),
    _opt("tasks", Optional[str], "Comma-separated lm-eval tasks.", panel="Evaluation"),
    _opt("limit", Optional[int], "Documents per task (for quick runs).", panel="Evaluation"),
    _opt("num_fewshot", Optional[int], "Few-shot examples per task.", panel="Evaluation"),
    _opt("batch_size", Optional[int], "Evaluation batch size.", panel="Evaluation"),
    _opt("include_path", Optional[str], "Directory of extra lm-eval task YAMLs (offline tasks).", panel="Evaluation"),
    _opt("perplexity", Optional[str], "Perplexity text: wikitext (default) or a local file.", panel="Evaluation"),
    _opt("perplexity_tokens", Optional[int], "Evaluate perplexity on at most this many tokens.", panel="Evaluation"),
    _opt("dtype", Optional[str], "auto, float32, bfloat16 or float16.", panel="Runtime"),
    _opt("device", Optional[str], "cpu, cuda, cuda:1 ...", panel="Runtime"),
    _opt("allow_pickle", Optional[bool], "Allow loading pickle .bin checkpoints.", "--allow-pickle", panel="Runtime"),
    _opt("trust_remote_code", Optional[bool], "Let transformers run the checkpoint's own modeling code (auto_map). Only for code you have read.", "--trust-remote-code", panel="Runtime"),
    _opt("offload", Optional[bool], "Score one layer at a time from disk (models larger than memory).", "--offload", panel="Runtime"),
    _opt("device_map", Optional[str], "accelerate device map for loading, e.g. auto (several GPUs).", panel="Runtime"),
    _opt("max_shard_size", Optional[str], "Largest safetensors shard, e.g. 5GB.", panel="Runtime"),
    _opt("format", Optional[str], "Output: safetensors, gguf or both (default: both for a .gguf MODEL, else safetensors).", panel="Output"),
    _opt("gguf_type", Optional[str], "GGUF export type of a transformers model: BF16 (default) or Q8_0.", panel="Output"),
    _opt("recipe", Optional[Path], "YAML recipe; flags given on the command line override it.", panel="Runtime"),
    _opt("quiet", Optional[bool], "Show only warnings, errors and the final line.", "--quiet", panel="Display"),
    _opt("verbose", Optional[bool], "Also show the libraries' own log messages.", "--verbose", panel="Display"),
    _opt("log_json", Optional[Path], "Also write one JSON event per line (stages, progress, warnings, summary) to FILE.", panel="Display"),
]
DISPLAY_KEYS = ("quiet", "verbose", "log_json")


def with_recipe_options(func: Optional[Callable] = None, *, exclude: tuple = ()) -> Callable:
    """Add RECIPE_OPTIONS (but `exclude`) to a command; it receives them collected in `recipe_options: dict`."""
    if func is None:
        return functools.partial(with_recipe_options, exclude=exclude)
    sig = inspect.signature(func)
    own = [p for p in sig.parameters.values() if p.name != "recipe_options"]
    added = [p for p in RECIPE_OPTIONS if p.name not in exclude]
    names = {p.name for p in added}

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        recipe_options = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        return func(*args, recipe_options=recipe_options, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + added)  # type: ignore[attr-defined]
    return wrapper


def build_recipe(model: str, options: dict[str, Any], **extra: Any) -> Recipe:
    """A Recipe from `--recipe` (if any) overridden by the flags given and by `extra` (e.g. output_dir)."""
    options = {k: v for k, v in options.items() if k not in DISPLAY_KEYS}
    recipe_path = options.pop("recipe", None)
    data: dict[str, Any] = Recipe.from_yaml(recipe_path).to_dict() if recipe_path else {}
    data.update({k: v for k, v in options.items() if v is not None})  # strings of lists are split by from_dict
    data.update({k: v for k, v in extra.items() if v is not None})
    if model:
        data["model"] = model
    return Recipe.from_dict(data)


def command_line(redact: tuple[str, ...] = ("token",)) -> str:
    """The running command, rebuilt from what click parsed (so it is exact however it was invoked), with the
    options the user set, and secrets replaced by ***. Stored in the report and the card."""
    from typer import _click as click  # typer >= 0.20 vendors its own click

    ctx = click.globals.get_current_context()
    words = ["hf-layerprune", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or param.name == "recipe_options":
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
            continue
        if param.name in redact:
            words += [param.opts[0], "***"]
        elif isinstance(value, bool):
            words.append(param.opts[0] if value else (param.secondary_opts or [f"--no-{param.opts[0][2:]}"])[0])
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


def open_display(options: dict[str, Any]):
    """The run's progress display from the --quiet / --verbose / --log-json flags (progress.Display)."""
    from hf_layerprune import distributed
    from hf_layerprune.outputs import check_output_file
    from hf_layerprune.progress import Display

    if not distributed.is_main():  # several processes: rank 0 shows the run, the others stay quiet
        return Display("quiet", stream=distributed.quiet_stream())
    check_output_file(options.get("log_json"), "--log-json")
    return Display("quiet" if options.get("quiet") else "auto", verbose=bool(options.get("verbose")),
                   json_path=options.get("log_json"))


def show_summary(display, report: dict[str, Any], output: str | None, next_command: str | None) -> None:
    from hf_layerprune.summary import closing

    table, record = closing(report, output, next_command)
    display.summary(table, record)
