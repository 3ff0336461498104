"""Rendering: the card text from a report (``card_text``), and ``README.md`` with its plots written beside
``layerprune.json`` (``render_card``), which it reads and never changes. ``record_base_card`` is the separate step
that remembers the base model's license in the report (so that later renders work offline).

The body comes from ``templates/model_card.md.j2`` rendered in a Jinja2 ``SandboxedEnvironment`` with
autoescaping on; every value reaches it through view.py (escaped and formatted).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hf_layerprune.card.formatting import HUB, code, hub_id, md
from hf_layerprune.card.metadata import card_data
from hf_layerprune.card.view import PLOT_FILES, _published_repo, build_context
from hf_layerprune.errors import CheckpointError, ConfigError
from hf_layerprune.hub import CARD_FILENAME, find_base_card, license_from_card_file
from hf_layerprune.report import read_report, write_report

TEMPLATE_NAME = "model_card.md.j2"


def _read(out: Path) -> dict[str, Any]:
    try:
        report = read_report(out)
    except FileNotFoundError:  # (read_report itself refuses a file that is not a JSON object, in one line)
        raise CheckpointError(f"{out} has no layerprune.json; is it a hf-layerprune output directory?") from None
    return report


def base_card_info(report: dict[str, Any], *, base_card: str | os.PathLike | None = None,
                   online: bool | None = None) -> dict[str, Any] | None:
    """The base model's license fields: from ``base_card`` (a card file), else as recorded in the report, else
    looked up (hub.find_base_card); None when unknown."""
    recorded = report.get("base_card") if isinstance(report.get("base_card"), dict) else None
    if base_card is not None:
        return license_from_card_file(base_card)
    if recorded and recorded.get("license"):
        return recorded
    return find_base_card(report, online=online) or recorded


def record_base_card(output_dir: str | os.PathLike, *, base_card: str | os.PathLike | None = None,
                     online: bool | None = None) -> dict[str, Any] | None:
    """Look the base model's license up and remember it in ``layerprune.json`` (when found and new); returns it."""
    out = Path(output_dir)
    report = _read(out)
    recorded = report.get("base_card") if isinstance(report.get("base_card"), dict) else None
    info = base_card_info(report, base_card=base_card, online=online)
    if info and info.get("license") and info != recorded:
        report["base_card"] = {k: v for k, v in info.items() if not k.startswith("_")}
        write_report(out, report)
    return info


def _license_link(info: dict[str, Any], base: Any, revision: Any, output_dir: Path | None) -> str | None:
    link = info.get("license_link")
    if not isinstance(link, str) or not link:
        return None
    if re.match(r"^https?://", link):
        return link
    if output_dir is not None and (output_dir / link).is_file():
        return link  # the license file was copied beside the weights
    rid = hub_id(base)
    if rid and re.fullmatch(r"[\w./-]+", link) and ".." not in link:
        return f"{HUB}/{rid}/blob/{revision if isinstance(revision, str) and revision else 'main'}/{link.lstrip('./')}"
    return None


def _environment():
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(Path(__file__).parent.parent / "templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md, code=code)
    return env


def make_plots(report: dict[str, Any], output_dir: Path) -> dict[str, str]:
    """Draw the plots the report has data for; returns {kind: file name relative to the card}."""
    from hf_layerprune import plots

    made: dict[str, str] = {}
    scoring = report.get("scoring") or {}
    if scoring.get("scores"):
        path = plots.plot_layer_scores(scoring, report.get("removed_layers") or [], output_dir / PLOT_FILES["scores"],
                                       removed_sublayers=report.get("removed_sublayers"))
        if path:
            made["scores"] = PLOT_FILES["scores"]
    losses = (report.get("healing") or {}).get("losses")
    if isinstance(losses, list) and len(losses) >= 2 and plots.plot_healing_loss(losses, output_dir / PLOT_FILES["healing"]):
        made["healing"] = PLOT_FILES["healing"]
    from hf_layerprune.card.evaluation import evaluation_view

    evaluation = report.get("evaluation") or {}
    view = evaluation_view(evaluation) if evaluation else None
    if view and view["bars"] and plots.plot_evaluation(view["bars"], output_dir / PLOT_FILES["evaluation"]):
        made["evaluation"] = PLOT_FILES["evaluation"]
    for kind, name in PLOT_FILES.items():  # a re-render without the data drops the old picture
        if kind not in made and (output_dir / name).exists():
            (output_dir / name).unlink()
    return made


def card_text(report: dict[str, Any], *, model_name: str, repo_id: str | None = None,
              license_info: dict[str, Any] | None = None, images: dict[str, str] | None = None,
              output_dir: Path | None = None) -> str:
    """The full README.md text (YAML header + body) for ``report`` (local paths reduced to names: provenance.py)."""
    from hf_layerprune.provenance import portable_report

    report = portable_report(report, record_provenance=False)
    info = dict(license_info or {})
    info["_resolved_link"] = _license_link(info, report.get("base_model"), report.get("base_revision"), output_dir)
    data = card_data(report, model_name=repo_id or model_name, license_info=info)
    context = build_context(report, model_name=repo_id or model_name, repo_id=repo_id, license_info=info,
                            images=images or {}, output_dir=output_dir)
    body = _environment().get_template(TEMPLATE_NAME).render(**context)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def render_card(
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_card: str | os.PathLike | None = None,
    plots: bool = True,
    online: bool | None = None,
) -> Path:
    """Write ``README.md`` (and the plots) in ``output_dir`` from its ``layerprune.json``; returns the card path.

    ``repo_id``: the Hub repo the model is (or will be) published to (title, usage snippet, model-index name).
    ``base_card``: a model card file to take the license from (instead of looking the base model up).
    ``online``: allow the Hub API lookup of the base card (None: unless HF_HUB_OFFLINE).
    """
    out = Path(output_dir)
    report = _read(out)
    if repo_id is not None and not hub_id(repo_id):
        raise ConfigError(f"{repo_id!r} is not a valid Hub repo id (use owner/name)")
    info = base_card_info(report, base_card=base_card, online=online)
    images = make_plots(report, out) if plots else {}
    name = repo_id or _published_repo(report)
    model_name = name or _default_name(out, report)
    text = card_text(report, model_name=model_name, repo_id=name, license_info=info, images=images, output_dir=out)
    path = out / CARD_FILENAME
    tmp = path.with_name(f".{CARD_FILENAME}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _default_name(out: Path, report: dict[str, Any]) -> str:
    name = out.resolve().name
    if name.startswith(".") and ".tmp-" in name:  # rendered inside the pipeline's staging directory
        name = name[1:].split(".tmp-")[0]
    return name or "pruned-model"
