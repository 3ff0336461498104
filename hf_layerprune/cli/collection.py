"""`hf-layerprune collection REPO... [--title T]`: gather published variants in one Hub collection.

Each REPO (and every model the collection already holds) is read back from the Hub (its layerprune.json) and the
collection is ordered by depth, fewest layers removed first, each item's note giving its headline numbers. Run
once per variant (the publishing workflow's matrix jobs do) or once for all: the result is the same collection.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from hf_layerprune.cli.app import app
from hf_layerprune.runtime.distributed import rank_zero_only
from hf_layerprune.runtime.errors import CheckpointError, ConfigError, cli_errors

console = Console(stderr=True, highlight=False, soft_wrap=True)


def default_collection_title(model: str) -> str:
    from hf_layerprune.hub import COLLECTION_TITLE_MAX, _model_name

    suffix = " pruned variants"
    return _model_name(model)[: COLLECTION_TITLE_MAX - len(suffix)] + suffix


def gather(repos: list[str], reports: dict[str, dict], title: str | None, *, token: str | None,
           private: bool = False) -> str:
    """Create or update the collection of `repos` (Hub ids of published variants; `reports`: layerprune.json of
    those known already) plus the variants it holds; returns its URL."""
    from hf_layerprune import hub
    from hf_layerprune.report import REPORT_FILENAME
    from hf_layerprune.card.summary import collection_note

    namespace = repos[0].split("/")[0]
    base = str(reports[repos[0]].get("base_model") or repos[0]) if repos[0] in reports else repos[0]
    title = title or default_collection_title(base)
    for repo_id in dict.fromkeys(repos + hub.collection_models(title, namespace, token=token)):
        if repo_id not in reports:
            report = hub.pushed_json(repo_id, REPORT_FILENAME, token=token)
            if report is None and repo_id in repos:
                raise CheckpointError(f"{repo_id} has no layerprune.json: not an hf-layerprune output")
            if report is not None:
                reports[repo_id] = report
    order = sorted(reports, key=lambda r: (-int(reports[r].get("num_layers_after") or 0), r))
    return hub.publish_collection(title, namespace, [(r, collection_note(reports[r])) for r in order], token=token,
                                  description=f"{hub.public_name(base)} pruned to several depths with hf-layerprune",
                                  private=private)


@app.command()
@cli_errors
@rank_zero_only
def collection(
    repos: Annotated[list[str], typer.Argument(help="Published variants (Hub ids) to gather; the collection's own models are kept.")],
    title: Annotated[Optional[str], typer.Option("--title", help="Collection title (default '<model> pruned variants'); the owner is the first repo's namespace.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the collection as private.")] = False,
    token: Annotated[Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")] = None,
) -> None:
    """Create or update a Hub collection of pruned variants, ordered by depth with their headline numbers."""
    from hf_layerprune import hub

    for repo_id in repos:
        hub.check_repo_id(repo_id)
        if "/" not in repo_id:
            raise ConfigError(f"give {repo_id} as owner/name")
    token = hub.resolve_token(token)
    hub.check_write_access(token, repos[0])
    url = gather(list(repos), {}, title, token=token, private=private)
    console.print(f"Collection {url}")
    typer.echo(url)
