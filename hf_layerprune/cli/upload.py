"""`hf-layerprune upload DIR --repo-id ID`: publish a pruned model folder to the Hub and verify it reloads.

Progress goes to stderr; the one line on stdout is the page of the push (repo, branch or pull request), so
`URL=$(hf-layerprune upload out ...)` works in scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from hf_layerprune.distributed import rank_zero_only
from hf_layerprune.cli.app import app
from hf_layerprune.errors import LayerPruneError, cli_errors
from hf_layerprune.report import REPORT_FILENAME, Report

console = Console(stderr=True, highlight=False, soft_wrap=True)


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
    from hf_layerprune.gguf_publish import GgufPushError

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


def check_gguf_target(directory: Path | None, repo_id: str, gguf_repo_id: str | None, gguf_only: bool = False, *,
                      token: str | None, both: bool | None = None, **target: Any) -> str | None:
    """The GGUF repo of a both-formats folder (`both`: known before the folder exists, for push), checked like the
    main target before any work; None when the folder has one format."""
    from hf_layerprune import hub
    from hf_layerprune.gguf_publish import default_gguf_repo, has_both

    both = has_both(directory) if both is None else both
    if not both:
        if gguf_only or gguf_repo_id:
            raise LayerPruneError("--gguf-only and --gguf-repo-id are for a folder holding both safetensors and GGUF "
                                  "(--format both)")
        return None
    gguf_repo_id = gguf_repo_id or default_gguf_repo(repo_id)
    if gguf_repo_id == repo_id:
        raise LayerPruneError("--gguf-repo-id must differ from --repo-id: the GGUF gets a repo of its own")
    hub.check_repo_id(gguf_repo_id)
    hub.check_write_access(token, gguf_repo_id)
    hub.check_target(gguf_repo_id, token=token, **target)
    return gguf_repo_id


def publish_and_verify(directory: Path, report: Report, repo_id: str, *, user: str, token: str | None,
                       private: bool, revision: str | None, create_pr: bool, commit_message: str | None,
                       exist_ok: bool, verify: bool, trust_remote_code: bool = False, gguf_repo_id: str | None = None,
                       gguf_only: bool = False) -> str:
    """Probe `directory` locally, push it through a verified staging commit, print the URL (shared by push).

    With `gguf_repo_id` (a both-formats folder): the pruned model goes to `repo_id`, then, once verified there, the
    GGUF to `gguf_repo_id` (gguf_publish.split_views); `gguf_only` pushes the second alone."""
    from hf_layerprune import progress
    from hf_layerprune.gguf_publish import GgufPushError, split_views

    options = dict(user=user, token=token, private=private, revision=revision, create_pr=create_pr,
                   commit_message=commit_message, exist_ok=exist_ok, verify=verify, trust_remote_code=trust_remote_code)
    with progress.stage("publish"):
        if gguf_repo_id is None:
            return _publish_and_verify(directory, report, repo_id, **options)
        with split_views(directory, report, repo_id, gguf_repo_id) as (model_view, gguf_view):
            url = None if gguf_only else _publish_and_verify(model_view, report, repo_id, **options)
            try:
                gguf_url = _publish_and_verify(gguf_view, report, gguf_repo_id, **options)
            except LayerPruneError as exc:
                done = f"{repo_id} is published and verified; " if url else ""
                message = str(exc).split("; run the same command again")[0].rstrip(".")  # not the whole push again
                raise GgufPushError(f"{message}; {done}the GGUF repo {gguf_repo_id} was not published") from None
        say(f"GGUF in its own repo: {escape(gguf_url)} (base_model {escape(repo_id)}, quantized)")
        return url or gguf_url


def _publish_and_verify(directory: Path, report: Report, repo_id: str, *, user: str, token: str | None,
                        private: bool, revision: str | None, create_pr: bool, commit_message: str | None,
                        exist_ok: bool, verify: bool, trust_remote_code: bool) -> str:
    from hf_layerprune import checkpoint, hub

    from hf_layerprune.gguf_publish import is_gguf_folder, verify_pushed_gguf

    gguf_only = is_gguf_folder(directory)  # `--format gguf`: nothing for transformers to load, the GGUF is read back
    probe = None
    if not gguf_only:
        say(f"Checking {escape(directory.name)} locally (every shard, config, a forward pass)")
        probe = checkpoint.probe(directory, trust_remote_code=trust_remote_code)
    files = hub.local_files(directory)
    size_mb = sum((directory / f).stat().st_size for f in files) / 1e6
    where = "a pull request" if create_pr else (revision or "main")
    say(f"Publishing {len(files)} files ({size_mb:.1f} MB) to [bold]{escape(repo_id)}[/bold] ({escape(where)}) as {escape(user)}")

    def verify_revision(rev: str) -> dict[str, Any]:
        record = {} if gguf_only else hub.verify_pushed(repo_id, rev, directory, token, probe=probe,
                                                         trust_remote_code=trust_remote_code)
        return {**record, "gguf": verify_pushed_gguf(repo_id, rev, directory, token)}

    result = hub.publish_folder(
        directory, repo_id, token=token, private=private, revision=revision, create_pr=create_pr,
        commit_message=commit_message or default_commit_message(report, directory), exist_ok=exist_ok,
        verify=verify_revision if verify else None,
    )
    say(f"[green]Pushed[/green] commit {result.commit_oid[:10]} to {escape(result.web_url)}")
    check = result.verification
    if check is not None:
        if "max_abs_diff" in check:
            say(f"[green]Verified[/green] before it reached {escape(result.revision)}: reloaded {escape(repo_id)}@"
                f"{check['commit'][:10]} from the Hub; files byte-identical, logits match the local model "
                f"(max |diff| {check['max_abs_diff']:.2g} on {check['probe_tokens']} tokens)")
        for g in check.get("gguf", []):
            say(f"[green]Verified[/green] {escape(g['file'])} before it reached {escape(result.revision)}: read back "
                f"from the Hub, same SHA-256, {g['block_count']} blocks, {g['tensors']} tensors")
    else:
        say("[yellow]Not verified[/yellow] (--no-verify): checked locally only")
    return result.web_url


def say(text: str) -> None:
    """A progress line: into the run's display when one is active (push, sweep), else to stderr."""
    from hf_layerprune import progress

    if progress.active():
        progress.message(text)
    else:
        console.print(text)


def check_model_folder(directory: Path) -> Report:
    """The folder's layerprune.json as a Report, after checking its files are whole (every shard, the index);
    one-line errors."""
    from hf_layerprune.checkpoint import check_links, check_weights, read_json

    if not directory.is_dir():
        raise LayerPruneError(f"{directory} is not a directory")
    from hf_layerprune.gguf_publish import is_gguf_folder

    weights = sorted(directory.glob("*.safetensors"))
    if is_gguf_folder(directory):  # `--format gguf`: the .gguf file holds config and weights
        weights, has_config = [True], True
    else:
        has_config = (directory / "config.json").is_file()
    missing = [name for name, present in (("config.json", has_config),
                                          ("*.safetensors weights", bool(weights)),
                                          (REPORT_FILENAME, (directory / REPORT_FILENAME).is_file())) if not present]
    if missing:
        raise LayerPruneError(f"{directory} is not a pruned model folder: it lacks {', '.join(missing)} "
                              "(write one with `hf-layerprune prune MODEL ... --output-dir DIR`)")
    check_links(directory)  # before anything reads a file: no link leads out of the folder
    report = read_json(directory / REPORT_FILENAME)
    if not is_gguf_folder(directory):
        read_json(directory / "config.json")
        check_weights(directory)
    return Report.from_dict(report)


def default_commit_message(report: Report, directory: Path) -> str:
    """The commit title: the base model by Hub id, or by file name when it was local (no local paths published)."""
    from hf_layerprune.hub import public_name

    before, after = report.source.num_layers_before, report.cut.num_layers_after if report.cut else None
    base = public_name(report.source.base_model or directory.name)
    if before is not None and after is not None:
        return f"Upload {base} pruned from {before} to {after} layers (hf-layerprune)"
    return f"Upload {base} (hf-layerprune)"


def upload_flags(*, private: bool, revision: str | None, create_pr: bool, exist_ok: bool, verify: bool,
                 trust: bool) -> list[str]:
    """The `upload` flags that publish a kept folder exactly as the failed `push` would have."""
    flags = [flag for flag, on in (("--private", private), ("--create-pr", create_pr), ("--exist-ok", exist_ok),
                                   ("--no-verify", not verify), ("--trust-remote-code", trust)) if on]
    return flags + (["--revision", revision] if revision else [])
