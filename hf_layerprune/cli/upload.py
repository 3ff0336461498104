"""`hf-layerprune upload DIR --repo-id ID`: publish a pruned model folder to the Hub and verify it reloads.

Progress goes to stderr; the one line on stdout is the page of the push (repo, branch or pull request), so
`URL=$(hf-layerprune upload out ...)` works in scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hf_layerprune.cli.app import app
from hf_layerprune.runtime.distributed import rank_zero_only
from hf_layerprune.runtime.errors import cli_errors
from hf_layerprune.flow.publish import check_gguf_target, check_model_folder, publish_and_verify, upload_flags


@app.command()
@cli_errors
@rank_zero_only  # under torchrun / accelerate launch: rank 0 alone
def upload(
    directory: Annotated[Path, typer.Argument(help="Pruned model folder (config.json, weights, layerprune.json).")],
    repo_id: Annotated[str | None, typer.Option("--repo-id", help="Target repo; default <user>/<model>-pruned-<N>L.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to push to (created from main if missing).")] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of pushing to a branch.")] = False,
    commit_message: Annotated[str | None, typer.Option("--commit-message", help="Commit title.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Replace the model on main of an existing repo.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Commit to a staging branch, reload it from the Hub and compare with the local model before it reaches the target branch.")] = True,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Let transformers run the folder's own modeling code (auto_map) when probing and verifying it. Only for code you have read.")] = False,
    gguf_repo_id: Annotated[str | None, typer.Option("--gguf-repo-id", help="Repo for the GGUF of a folder that holds both formats (default: <repo-id>-GGUF); its card names --repo-id as base_model (quantized).")] = None,
    gguf_only: Annotated[bool, typer.Option("--gguf-only", help="Publish only the GGUF repo of a both-formats folder (the pruned repo is already published): resumes a push whose GGUF step failed.")] = False,
) -> None:
    """Publish a pruned model folder to the Hugging Face Hub in one commit, verified before it reaches the branch."""
    from hf_layerprune import hub

    hub.check_repo_id(repo_id)
    hub.check_repo_id(gguf_repo_id)
    hub.check_revision(revision)
    report = check_model_folder(directory)
    token = hub.resolve_token(token)
    user = hub.check_write_access(token, repo_id)
    repo_id = repo_id or hub.default_repo_id(user, str(report.source.base_model or directory.name),
                                             report.cut.num_layers_after if report.cut else 0)
    gguf_repo_id = check_gguf_target(directory, repo_id, gguf_repo_id, gguf_only, token=token, private=private,
                                     revision=revision, create_pr=create_pr, exist_ok=exist_ok)
    from hf_layerprune.flow.gguf_publish import GgufPushError

    try:
        url = publish_and_verify(directory, report, repo_id, user=user, token=token, private=private,
                                 revision=revision, create_pr=create_pr, commit_message=commit_message,
                                 exist_ok=exist_ok, verify=verify, trust_remote_code=trust_remote_code,
                                 gguf_repo_id=gguf_repo_id, gguf_only=gguf_only)
    except GgufPushError as exc:
        import shlex

        resume = shlex.join(["hf-layerprune", "upload", str(directory), "--repo-id", repo_id, "--gguf-repo-id",
                             gguf_repo_id, "--gguf-only"] + upload_flags(private=private, revision=revision,
                            create_pr=create_pr, exist_ok=exist_ok, verify=verify, trust=trust_remote_code))
        raise GgufPushError(f"{exc}; publish the GGUF with `{resume}`") from None
    typer.echo(url)
