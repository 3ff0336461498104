"""The typer application every command registers on (one module per command in this package)."""

import typer
import typer.rich_utils as typer_rich_utils

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


typer_rich_utils.rich_format_error = _one_line_usage_error
