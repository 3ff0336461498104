"""`hf-layerprune sweep MODEL --drop 4,8,12 --output-dir ROOT`: several depths from one scoring pass."""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from hf_layerprune.runtime import distributed
from hf_layerprune.cli.app import app
from hf_layerprune.cli.options import RegistryHelp, build_recipe, command_line, open_display, with_recipe_options
from hf_layerprune.runtime.errors import ConfigError, cli_errors

console = Console(stderr=True, highlight=False, soft_wrap=True)


def parse_depths(text: str) -> list[int]:
    try:
        depths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"cannot read --drop {text!r}: give depths like 4,8,12") from None
    if any(n < 1 for n in depths):
        raise ConfigError(f"--drop {text}: every depth must be at least 1")
    return depths


@app.command(cls=RegistryHelp)
@cli_errors
@with_recipe_options(exclude=("drop", "layers", "load_in_4bit"))  # each depth is undone; an adapter in place is not
def sweep(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Hub model id, local model directory, or .gguf file.")],
    drop: Annotated[str, typer.Option("--drop", help="Comma-separated depths to remove, e.g. 4,8,12.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder that receives one model per depth.")],
    overwrite: Annotated[bool, typer.Option(help="Replace existing variant folders.")] = False,
    repo_prefix: Annotated[Optional[str], typer.Option("--repo-prefix", help="Also push each variant to <prefix>-<N>L.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repos as private.")] = False,
    token: Annotated[Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Replace models on main of existing repos.")] = False,
    collection: Annotated[Optional[str], typer.Option("--collection", help="With --repo-prefix: title of the Hub collection that gathers the variants, ordered by depth with their headline numbers (created or updated; default '<model> pruned variants').")] = None,
    *,
    recipe_options: dict[str, Any],
) -> None:
    """Prune MODEL to several depths from ONE scoring pass; each output's card carries the sweep's Pareto plot."""
    from hf_layerprune.flow.sweep import run_sweep

    depths = parse_depths(drop)
    recipe = build_recipe(model, recipe_options, drop=max(depths) if depths else None, overwrite=overwrite or None)
    user = None
    if collection is not None and not repo_prefix:
        raise ConfigError("--collection gathers pushed variants: give --repo-prefix too")
    from hf_layerprune import hub

    if repo_prefix:
        token = hub.resolve_token(token)
        user = distributed.on_main(hub.check_write_access, token, repo_prefix, share=True)  # rank 0 talks to the Hub
    with open_display(recipe_options, model, output_dir) as display:
        outputs = run_sweep(recipe, depths, output_dir, command=command_line(ctx), log=display.message)
        if not distributed.is_main():  # rank 0 reports and publishes
            return
        for out in outputs:
            display.message(f"[green]Saved[/green] {out}")
        if repo_prefix:
            from hf_layerprune.flow.publish import check_gguf_target, publish_and_verify
            from hf_layerprune.report import load_report

            published = {}
            for out in outputs:
                report = load_report(out)
                repo_id = f"{repo_prefix}-{report.cut.num_layers_after}L"
                if "/" not in repo_id:
                    repo_id = f"{user}/{repo_id}"
                where = dict(private=private, revision=None, create_pr=False, exist_ok=exist_ok)
                gguf_repo = check_gguf_target(out, repo_id, None, token=token, **where)  # --format both: its own repo
                url = publish_and_verify(out, report, repo_id, user=user, token=token, commit_message=None,
                                         verify=True, gguf_repo_id=gguf_repo, **where)
                display.message(f"[green]Published[/green] {url}")
                published[repo_id] = report.to_dict()
            from hf_layerprune.cli.collection import gather

            url = gather(list(published), published, collection, token=token, private=private)
            display.message(f"[green]Collection[/green] {url}")
