"""`hf-layerprune prune MODEL (--drop N | --layers ...) --output-dir DIR`."""


import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from hf_layerprune.runtime import distributed
from hf_layerprune.cli.app import app
from hf_layerprune.cli.options import RegistryHelp, build_recipe, command_line, open_display, show_summary, with_recipe_options
from hf_layerprune.runtime.errors import cli_errors
from hf_layerprune.card.summary import removed_text

console = Console(stderr=True, soft_wrap=True)


@app.command(cls=RegistryHelp)
@cli_errors
@with_recipe_options
def prune(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Hub model id, local model directory, or .gguf file.")],
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Where to write the pruned model.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --output-dir if it exists.")] = False,
    *,
    recipe_options: dict[str, Any],
) -> None:
    """Remove decoder layers (chosen by a metric, or given exactly) and save a model stock transformers loads."""
    from hf_layerprune.flow.pipeline import run

    recipe = build_recipe(model, recipe_options, output_dir=str(output_dir) if output_dir else None, overwrite=overwrite or None)
    with open_display(recipe_options, model, recipe.output_dir) as display:
        if distributed.check_launch():
            display.warning(distributed.check_launch())
        report = run(recipe, command=command_line(ctx), log=display.message).to_dict()
        if not distributed.is_main():  # rank 0 reports the run
            return
        show_summary(display, report, recipe.output_dir, shlex.join(["hf-layerprune", "upload", str(recipe.output_dir)]))
    console.print(
        f"[green]Saved[/green] {recipe.output_dir}: {report['num_layers_before']} -> {report['num_layers_after']} layers, "
        f"removed {removed_text(report, counts=False)}", highlight=False,
    )
