"""The typer application every command registers on (one module per command in this package)."""

import typer

app = typer.Typer(
    name="hf-layerprune",
    help="Score, remove and heal decoder layers of Hugging Face causal LMs; evaluate, card and publish the result.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
