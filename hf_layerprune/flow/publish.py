"""Publishing a finished output folder (`upload`, and the end of `push` and `sweep --push`): the folder checked by
its formats' verifiers, one verified commit per repo (hub.publish_folder), a both-formats folder as two repos (the
GGUF's a `quantized` child, gguf_publish.py), and the flags that resume a failed publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from hf_layerprune.runtime.errors import CheckpointError, ConfigError, LayerPruneError
from hf_layerprune.report import REPORT_FILENAME, Report

console = Console(stderr=True, highlight=False, soft_wrap=True)


def check_gguf_target(directory: Path | None, repo_id: str, gguf_repo_id: str | None, gguf_only: bool = False, *,
                      token: str | None, both: bool | None = None, **target: Any) -> str | None:
    """The GGUF repo of a both-formats folder (`both`: known before the folder exists, for push), checked like the
    main target before any work; None when the folder has one format."""
    from hf_layerprune import hub
    from hf_layerprune.flow.gguf_publish import default_gguf_repo, has_both

    both = has_both(directory) if both is None else both
    if not both:
        if gguf_only or gguf_repo_id:
            raise ConfigError("--gguf-only and --gguf-repo-id are for a folder holding both safetensors and GGUF "
                                  "(--format both)")
        return None
    gguf_repo_id = gguf_repo_id or default_gguf_repo(repo_id)
    if gguf_repo_id == repo_id:
        raise ConfigError("--gguf-repo-id must differ from --repo-id: the GGUF gets a repo of its own")
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
    from hf_layerprune.runtime import progress
    from hf_layerprune.flow.gguf_publish import GgufPushError, split_views

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
    from hf_layerprune.surgery import checkpoint
    from hf_layerprune import hub

    from hf_layerprune.flow.gguf_publish import is_gguf_folder

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
        return {**record, "gguf": hub.verify_pushed_gguf(repo_id, rev, directory, token)}

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
    from hf_layerprune.runtime import progress

    if progress.active():
        progress.message(text)
    else:
        console.print(text)


def check_model_folder(directory: Path) -> Report:
    """The folder's layerprune.json as a Report, after checking its files are whole: each output format it holds, by that
    format's verifier (formats.OUTPUT_FORMATS: every shard and the index, every GGUF header); one-line errors."""
    from hf_layerprune.surgery.checkpoint import check_links, read_json
    from hf_layerprune.runtime.formats import OUTPUT_FORMATS, written_formats

    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")
    formats = written_formats(directory)
    weights = " or ".join(f"{entry.files[0]} ({entry.name})" for entry in OUTPUT_FORMATS.values())
    missing = [name for name, present in ((f"model weights: {weights}", bool(formats)),
                                          (REPORT_FILENAME, (directory / REPORT_FILENAME).is_file())) if not present]
    if missing:
        raise CheckpointError(f"{directory} is not a pruned model folder: it lacks {', '.join(missing)} "
                              "(write one with `hf-layerprune prune MODEL ... --output-dir DIR`)")
    check_links(directory)  # before anything reads a file: no link leads out of the folder
    report = read_json(directory / REPORT_FILENAME)
    for entry in formats:
        entry.call("verifier", directory)
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
