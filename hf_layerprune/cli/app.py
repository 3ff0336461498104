"""The typer application every command registers on (one module per command in this package)."""

import importlib.util
import sys

import typer


def _lazy_rich_utils():
    """typer.rich_utils, loaded when first used (importlib's LazyLoader): typer needs it for --help and at error
    time, while importing it up front pulls in rich's markdown and traceback renderers (markdown-it, pygments, attrs:
    ~130 modules, 60 ms of every run with the files cached, more from a cold disk). Attributes set on it now survive
    the load."""
    if "typer.rich_utils" in sys.modules:
        return sys.modules["typer.rich_utils"]
    spec = importlib.util.find_spec("typer.rich_utils")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["typer.rich_utils"] = typer.rich_utils = module
    spec.loader.exec_module(module)
    return module


app = typer.Typer(
    name="hf-layerprune",
    help="Score, remove and heal decoder layers of Hugging Face causal LMs; evaluate, card and publish the result.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from hf_layerprune import __version__

        typer.echo(f"hf-layerprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """hf-layerprune: make LLMs shallower and publish them (also usable as `hf layerprune ...`)."""


def _one_line_usage_error(exc) -> None:
    """Usage errors (a missing argument, `--seq-len abc`) end like every other error: one `Error:` line.

    Replaces typer's boxed rich panel (typer calls `rich_utils.rich_format_error` at error time, so this
    assignment takes effect for every command); the help text keeps its rich formatting."""
    import sys

    from hf_layerprune.runtime.errors import one_line

    if exc.__class__.__name__ == "NoArgsIsHelpError":
        return
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        print(f"Try '{ctx.command_path} --help' for help.", file=sys.stderr)
    print(f"Error: {one_line(exc.format_message())}", file=sys.stderr)


_lazy_rich_utils().rich_format_error = _one_line_usage_error
