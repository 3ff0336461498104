"""`hf-layerprune upload DIR --repo-id ID`: publish a pruned model folder to the Hub and verify it reloads.

Progress goes to stderr; the one line on stdout is the page of the push (repo, branch or pull request), so
`URL=$(hf-layerprune upload out ...)` works in scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from hf_layerprune.cli.app import app
from hf_layerprune.errors import LayerPruneError, cli_errors
from hf_layerprune.report import REPORT_FILENAME

console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def upload(
    directory: Annotated[Path, typer.Argument(help="Pruned model folder (config.json, weights, layerprune.json).")],
    repo_id: Annotated[str | None, typer.Option("--repo-id", help="Target repo; default <user>/<model>-pruned-<N>L.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to push to (created from main if missing).")] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of pushing to a branch.")] = False,
    commit_message: Annotated[str | None, typer.Option("--commit-message", help="Commit title.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Replace the model on main of an existing repo.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Reload the pushed revision and compare logits.")] = True,
) -> None:
    """Publish a pruned model folder to the Hugging Face Hub in one commit, then reload it from the Hub to verify."""
    from hf_layerprune import hub

    report = check_model_folder(directory)
    token = hub.resolve_token(token)
    user = hub.check_write_access(token, repo_id)
    repo_id = repo_id or hub.default_repo_id(user, str(report.get("base_model", directory.name)), report.get("num_layers_after", 0))
    publish_and_verify(directory, report, repo_id, user=user, token=token, private=private, revision=revision,
                       create_pr=create_pr, commit_message=commit_message, exist_ok=exist_ok, verify=verify)


def publish_and_verify(directory: Path, report: dict[str, Any], repo_id: str, *, user: str, token: str | None,
                       private: bool, revision: str | None, create_pr: bool, commit_message: str | None,
                       exist_ok: bool, verify: bool) -> None:
    """Push `directory` in one commit, reload the pushed revision from the Hub, print the URL (shared by push)."""
    from hf_layerprune import hub

    files = hub.local_files(directory)
    size_mb = sum((directory / f).stat().st_size for f in files) / 1e6
    where = "a pull request" if create_pr else (revision or "main")
    console.print(f"Publishing {len(files)} files ({size_mb:.1f} MB) to [bold]{escape(repo_id)}[/bold] ({escape(where)}) as {escape(user)}")
    result = hub.publish_folder(
        directory, repo_id, token=token, private=private, revision=revision, create_pr=create_pr,
        commit_message=commit_message or default_commit_message(report, directory), exist_ok=exist_ok,
    )
    console.print(f"[green]Pushed[/green] commit {result.commit_oid[:10]} to {escape(result.web_url)}")
    if verify:
        from hf_layerprune.gguf_publish import is_gguf_folder, verify_pushed_gguf

        if not is_gguf_folder(directory):  # a GGUF-only folder has nothing for transformers to reload
            check = hub.verify_pushed(repo_id, result.commit_oid, directory, token)
            console.print(
                f"[green]Verified[/green]: reloaded {escape(repo_id)}@{check['commit'][:10]} from the Hub; logits match the "
                f"local model (max |diff| {check['max_abs_diff']:.2g} on {check['probe_tokens']} tokens)"
            )
        for g in verify_pushed_gguf(repo_id, result.commit_oid, directory, token):
            console.print(f"[green]Verified[/green] {escape(g['file'])}: read back from the Hub, same SHA-256, "
                          f"{g['block_count']} blocks, {g['tensors']} tensors")
    else:
        console.print("[yellow]Not verified[/yellow] (--no-verify)")
    typer.echo(result.web_url)


def check_model_folder(directory: Path) -> dict[str, Any]:
    """The folder's layerprune.json, after checking it holds a loadable model; one-line errors otherwise."""
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
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = set(_read_json(index).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (directory / s).is_file())
        if absent:
            raise LayerPruneError(f"{directory} lacks the weight shards {', '.join(absent)} listed in {index.name}")
    return _read_json(directory / REPORT_FILENAME)


def default_commit_message(report: dict[str, Any], directory: Path) -> str:
    before, after = report.get("num_layers_before"), report.get("num_layers_after")
    base = report.get("base_model") or directory.name
    if before is not None and after is not None:
        return f"Upload {base} pruned from {before} to {after} layers (hf-layerprune)"
    return f"Upload {base} (hf-layerprune)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerPruneError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LayerPruneError(f"{path} is not a JSON object")
    return data
