"""`hf-layerprune push MODEL --drop N`: the whole pipeline, then one verified commit to the Hub."""

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from hf_layerprune.cli.app import app
from hf_layerprune.cli.options import build_recipe, command_line, with_recipe_options
from hf_layerprune.errors import cli_errors

console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
@cli_errors
@with_recipe_options(exclude=("revision",))
def push(
    model: Annotated[str, typer.Argument(help="Hub model id, local model directory, or .gguf file.")],
    repo_id: Annotated[Optional[str], typer.Option("--repo-id", help="Target repo; default <user>/<model>-pruned-<N>L.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Target branch (created from main if missing).")] = None,
    model_revision: Annotated[Optional[str], typer.Option("--model-revision", help="Revision of MODEL on the Hub.")] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of pushing to a branch.")] = False,
    commit_message: Annotated[Optional[str], typer.Option("--commit-message", help="Commit title.")] = None,
    token: Annotated[Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Replace the model on main of an existing repo.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Reload the pushed revision and compare logits.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Everything but the upload.")] = False,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Keep the local copy here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --output-dir if it exists.")] = False,
    *,
    recipe_options: dict[str, Any],
) -> None:
    """Prune, heal, evaluate and card MODEL, then publish it to the Hub in one commit and verify it loads."""
    from hf_layerprune import hub
    from hf_layerprune.cli.upload import publish_and_verify
    from hf_layerprune.pipeline import planned_num_layers, run

    recipe = build_recipe(model, {**recipe_options, "revision": model_revision})
    recipe.validate_target()
    token = hub.resolve_token(token)
    user = None
    if not dry_run:  # token and target are checked before any heavy work
        user = hub.check_write_access(token, repo_id)
        repo_id = repo_id or hub.default_repo_id(user, model, planned_num_layers(recipe, token=token))
        hub.check_target(repo_id, token=token, private=private, revision=revision, create_pr=create_pr, exist_ok=exist_ok)
    keep = output_dir is not None
    work = Path(tempfile.mkdtemp(prefix="hf-layerprune-push-")) if not keep else None
    recipe.output_dir = str(output_dir) if keep else str(work / "model")
    recipe.overwrite = overwrite
    try:
        report = run(recipe, command=command_line(), log=lambda msg: console.print(msg))
        out = Path(recipe.output_dir)
        if dry_run:
            console.print(f"[yellow]Dry run[/yellow]: not uploaded; the model is in {out if keep else 'a temporary folder (removed)'}")
            return
        publish_and_verify(out, report, repo_id, user=user, token=token, private=private, revision=revision,
                           create_pr=create_pr, commit_message=commit_message, exist_ok=exist_ok, verify=verify)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
