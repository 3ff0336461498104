"""The options shared by `prune`, `push` and `sweep`, declared once and added to each command's signature.

Every option defaults to None ("not given") so that a `--recipe run.yaml` value is only overridden by a flag
the user actually typed; the Recipe's own defaults fill the rest.
"""


import dataclasses
import functools
import inspect
import shlex
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperCommand

from hf_layerprune.recipe import Recipe

P = inspect.Parameter


def _opt(name: str, annotation: Any, help: str, flag: Optional[str] = None, panel: str = "Pruning") -> P:
    flags = [flag] if flag else []
    return P(name, P.KEYWORD_ONLY, default=None,
             annotation=Annotated[annotation, typer.Option(*flags, help=help, rich_help_panel=panel, show_default=False)])


def _cli_type(hint: Any) -> Any:
    """The type click parses a Recipe field as: lists arrive as comma-separated text (Recipe.from_dict splits)."""
    args = set(typing.get_args(hint)) - {type(None)} or {hint}
    for kind in (bool, int, float):
        if args == {kind}:
            return Optional[kind]
    return Optional[str]


def _recipe_options() -> list[P]:
    """One CLI option per Recipe field made with `recipe.option(...)`: name, type, help and panel from the field
    (RegistryHelp appends the registries' entries when help is shown)."""
    hints = typing.get_type_hints(Recipe)
    return [_opt(f.name, _cli_type(hints[f.name]), f.metadata["help"], f.metadata["flag"], panel=f.metadata["panel"])
            for f in dataclasses.fields(Recipe) if "help" in f.metadata]


RECIPE_OPTIONS: list[P] = [
    *_recipe_options(),
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


def command_line(ctx: typer.Context, redact: tuple[str, ...] = ("token",)) -> str:
    """The running command, rebuilt from what click parsed into the command's context `ctx` (so it is exact however
    it was invoked), with the options the user set, and secrets replaced by ***. Stored in the report and the card."""
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


def _options(cls) -> str:
    from hf_layerprune.runtime.registry import option_defaults

    listed = option_defaults(cls)
    return f"; options: {listed}" if listed else ""


class RegistryHelp(TyperCommand):
    """A command whose help lists the metrics and healers registered when the help is shown (registry.py): a
    metric added in its own module appears here without an edit to the CLI."""

    def format_help(self, ctx, formatter) -> None:
        from hf_layerprune.scoring import AutoSelection
        from hf_layerprune.runtime.formats import OUTPUT_FORMATS
        from hf_layerprune.healing import HEALERS
        from hf_layerprune.scoring import METRICS

        for param in self.params:
            if param.name == "heal":
                param.help = f"Healing method: {', '.join(HEALERS.choices())}; chain with + (linear+absorb)."
            if param.name == "format":
                param.help = ("Output: " + "; ".join(f"{e.name} ({e.summary})" for e in OUTPUT_FORMATS.values())
                              + "; both = safetensors and gguf (default: both for a .gguf MODEL, else safetensors).")
        if any(param.name == "metric" for param in self.params):
            self.epilog = "Metrics (--metric NAME or NAME:key=value,key=value; all: every one): " + "; ".join(
                f"{name} ({METRICS[name].summary}{_options(METRICS[name].options)})" for name in METRICS) + f"; auto (the default: {AutoSelection.summary})."
        super().format_help(ctx, formatter)


def open_display(options: dict[str, Any], model: str, output_dir: str | Path | None = None):
    """The run's progress display from the --quiet / --verbose / --log-json flags (progress.Display). The log is
    checked like every output (not in the source, nor in the output folder the run replaces)."""
    from hf_layerprune.runtime import distributed
    from hf_layerprune.runtime.outputs import check_output_file, model_paths
    from hf_layerprune.runtime.progress import Display

    if not distributed.is_main():  # several processes: rank 0 shows the run, the others stay quiet
        return Display("quiet", stream=distributed.quiet_stream())
    check_output_file(options.get("log_json"), "--log-json", model_paths(model), [output_dir] if output_dir else ())
    return Display("quiet" if options.get("quiet") else "auto", verbose=bool(options.get("verbose")),
                   json_path=options.get("log_json"))


def show_summary(display, report: dict[str, Any], output: str | None, next_command: str | None) -> None:
    from hf_layerprune.card.summary import closing

    table, record = closing(report, output, next_command)
    display.summary(table, record)
