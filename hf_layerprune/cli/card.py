"""`hf-layerprune card DIR`: (re-)render the model card of a pruned output from its layerprune.json alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from hf_layerprune.runtime.distributed import rank_zero_only
from hf_layerprune.cli.app import app
from hf_layerprune.runtime.errors import CheckpointError, LayerPruneError, cli_errors

console = Console(stderr=True)


@app.command()
@cli_errors
@rank_zero_only  # under torchrun / accelerate launch: rank 0 alone
def card(
    directory: Annotated[Path, typer.Argument(help="A hf-layerprune output directory (holds layerprune.json).")],
    repo_id: Annotated[Optional[str], typer.Option(help="Hub repo the model is published to (title, usage snippet, model-index).")] = None,
    base_card: Annotated[Optional[Path], typer.Option(help="A model card (README.md) to inherit the license from, instead of looking up the base model.")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the PNG plots next to the card.")] = True,
    offline: Annotated[bool, typer.Option("--offline", help="Do not ask the Hub for the base model's card.")] = False,
) -> None:
    """Write README.md (YAML metadata + body) and its plots in DIR; needs no model, only layerprune.json."""
    from hf_layerprune.flow.finish import rerender

    try:
        path = rerender(directory, repo_id=repo_id, base_card=base_card, plots=plots, online=False if offline else None,
                        remember=True)
    except LayerPruneError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:  # a hand-edited report
        raise CheckpointError(f"{directory}/layerprune.json has a value of an unexpected type "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "fix the file or re-run the command that wrote it") from None
    console.print(f"Wrote {path}", highlight=False)
