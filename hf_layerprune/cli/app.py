"""The typer application every command registers on (one module per command in this package)."""

import typer

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
