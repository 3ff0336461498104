"""`hf-layerprune push MODEL --drop N`: the whole pipeline, then one verified commit to the Hub."""

import shlex
import shutil
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from hf_layerprune.runtime import distributed
from hf_layerprune.cli.app import app
from hf_layerprune.cli.options import RegistryHelp, build_recipe, command_line, open_display, show_summary, with_recipe_options
from hf_layerprune.runtime.errors import LayerPruneError, cli_errors
from hf_layerprune.runtime.outputs import release, work_dir

PUSH_WORK_PREFIX = "hf-layerprune-push-"

console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command(cls=RegistryHelp)
@cli_errors
@with_recipe_options(exclude=("revision",))
def push(
    ctx: typer.Context,
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
    overwrite: Annotated[bool, typer.Option(help="Replace --output-dir if it is an earlier hf-layerprune output or empty.")] = False,
    gguf_repo_id: Annotated[Optional[str], typer.Option("--gguf-repo-id", help="With --format both: the GGUF's own repo (default: <repo-id>-GGUF), whose card names the pruned repo as base_model (quantized).")] = None,
    *,
    recipe_options: dict[str, Any],
) -> None:
    """Prune, heal, evaluate and card MODEL, then publish it to the Hub in one commit and verify it loads."""
    from hf_layerprune import hub
    from hf_layerprune.flow.publish import check_gguf_target, publish_and_verify, upload_flags
    from hf_layerprune.flow.gguf_publish import GgufPushError
    from hf_layerprune.flow.checks import check_recipe, planned_num_layers
    from hf_layerprune.flow.pipeline import run

    hub.check_repo_id(repo_id)
    hub.check_repo_id(gguf_repo_id)
    recipe = build_recipe(model, {**recipe_options, "revision": model_revision},
                          output_dir=str(output_dir) if output_dir else None, overwrite=overwrite or None)
    check_recipe(recipe)  # every option, before the network and before the model
    token = hub.resolve_token(token)

    both = (recipe.format or ("both" if model.lower().endswith(".gguf") else "safetensors")) == "both"

    def checks() -> tuple:  # token and targets are checked before any heavy work (by rank 0 alone)
        if dry_run:
            return None, repo_id, gguf_repo_id
        user = hub.check_write_access(token, repo_id)
        target = repo_id or hub.default_repo_id(user, model, planned_num_layers(recipe, token=token))
        where = dict(private=private, revision=revision, create_pr=create_pr, exist_ok=exist_ok)
        hub.check_target(target, token=token, **where)
        return user, target, check_gguf_target(None, target, gguf_repo_id, token=token, both=both, **where)

    user, repo_id, gguf_target = distributed.on_main(checks, share=True)
    keep = output_dir is not None
    work = work_dir(PUSH_WORK_PREFIX) if not keep and distributed.is_main() else None
    if not keep:  # rank 0's folder; the other ranks never write it
        recipe.output_dir = distributed.broadcast(str(work / "model") if work is not None else None)
    out = Path(recipe.output_dir)
    finished = False
    try:
        with open_display(recipe_options, model, recipe.output_dir) as display:
            result = run(recipe, command=command_line(ctx), log=display.message)
            report = result.to_dict()
            finished = True
            if not distributed.is_main():  # rank 0 publishes
                return
            if dry_run:
                display.message(f"[yellow]Dry run[/yellow]: not uploaded; the model is in {out if keep else 'a temporary folder (removed)'}")
                show_summary(display, report, str(out) if keep else None, None)
                return
            url = publish_and_verify(out, result, repo_id, user=user, token=token, private=private, revision=revision,
                                     create_pr=create_pr, commit_message=commit_message, exist_ok=exist_ok,
                                     verify=verify, trust_remote_code=recipe.trust_remote_code,
                                     gguf_repo_id=gguf_target)
            show_summary(display, report, str(out) if keep else None, url)
        typer.echo(url)
    except LayerPruneError as exc:
        if not finished:
            raise
        # the model is finished: keep it, and say how to publish it without redoing the work
        resume = shlex.join(["hf-layerprune", "upload", str(out), "--repo-id", repo_id]
                            + upload_flags(private=private, revision=revision, create_pr=create_pr,
                                           exist_ok=exist_ok, verify=verify, trust=recipe.trust_remote_code)
                            + (["--gguf-repo-id", gguf_target] if gguf_target and gguf_repo_id else [])
                            + (["--gguf-only"] if isinstance(exc, GgufPushError) else []))
        if work is not None:
            release(work)  # kept for `upload`: no later push sweeps it
        work = None
        message = str(exc).split("; run the same command again")[0]
        what = "the GGUF" if isinstance(exc, GgufPushError) else "it"
        raise type(exc)(f"{message}; the pruned model is kept in {out}: publish {what} with `{resume}`") from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
