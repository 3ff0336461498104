"""Rendering: the card text from a typed `Report` (``card_text``), and ``README.md`` with its plots written beside
``layerprune.json`` (``render_card``). Nothing here reads ``layerprune.json`` or looks the base model's card up:
the composition (finish.py) reads the file once with ``Report.from_dict`` and puts the base card in the Report.

The body comes from ``templates/model_card.md.j2`` rendered in a Jinja2 ``SandboxedEnvironment`` with
autoescaping on; every value reaches it through view.py (escaped and formatted).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hf_layerprune.card.formatting import HUB, code, hub_id, md
from hf_layerprune.card.metadata import card_data
from hf_layerprune.card.view import PLOT_FILES, _published_repo, build_context
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.report.provenance import CARD_FILENAME
from hf_layerprune.report import BaseCard, Report

TEMPLATE_NAME = "model_card.md.j2"


def _license_link(info: BaseCard, base: str | None, revision: str | None, output_dir: Path | None) -> str | None:
    link = info.license_link
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
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md, code=code)
    env.bytecode_cache = _bytecode_cache()
    return env


def _bytecode_cache():
    """The compiled template, kept in the cache folder (`jinja/`): compiling it costs ~0.12 s of every run, a sixth
    of a GGUF cut's. Best effort: an unwritable cache folder means compiling each time."""
    from jinja2 import FileSystemBytecodeCache

    from hf_layerprune.runtime.cache import cache_root

    class BestEffort(FileSystemBytecodeCache):
        def load_bytecode(self, bucket) -> None:
            try:
                super().load_bytecode(bucket)
            except OSError:
                pass

        def dump_bytecode(self, bucket) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError:
                pass

    folder = cache_root() / "jinja"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return BestEffort(str(folder))


def make_plots(report: Report, output_dir: Path) -> dict[str, str]:
    """Draw the plots the report has data for; returns {kind: file name relative to the card}."""
    from hf_layerprune.card import plots
    from hf_layerprune.card.evaluation import evaluation_view

    made: dict[str, str] = {}
    scoring, cut = report.scoring, report.cut
    if scoring is not None and scoring.scores:
        path = plots.plot_layer_scores(scoring.to_dict(), cut.removed_layers if cut else [],
                                       output_dir / PLOT_FILES["scores"],
                                       removed_sublayers=cut.removed_sublayers if cut else None)
        if path:
            made["scores"] = PLOT_FILES["scores"]
    losses = report.healing.losses if report.healing is not None else None
    if losses is not None and len(losses) >= 2 and plots.plot_healing_loss(losses, output_dir / PLOT_FILES["healing"]):
        made["healing"] = PLOT_FILES["healing"]
    view = evaluation_view(report.evaluation) if report.evaluation is not None else None
    if view and view["bars"] and plots.plot_evaluation(view["bars"], output_dir / PLOT_FILES["evaluation"]):
        made["evaluation"] = PLOT_FILES["evaluation"]
    for kind, name in PLOT_FILES.items():  # a re-render without the data drops the old picture
        if kind not in made and (output_dir / name).exists():
            (output_dir / name).unlink()
    return made


def card_text(report: Report, *, model_name: str, repo_id: str | None = None, images: dict[str, str] | None = None,
              output_dir: Path | None = None) -> str:
    """The full README.md text (YAML header + body) for ``report`` (local paths reduced to names: provenance.py);
    the license is the report's ``base_card``."""
    from hf_layerprune.report.provenance import portable_report

    report = Report.from_dict(portable_report(report.to_dict(), record_provenance=False))
    info = report.base_card or BaseCard()
    link = _license_link(info, report.source.base_model, report.source.base_revision, output_dir)
    data = card_data(report, model_name=repo_id or model_name, license_link=link)
    context = build_context(report, model_name=repo_id or model_name, repo_id=repo_id, license_link=link,
                            images=images or {}, output_dir=output_dir)
    body = _environment().get_template(TEMPLATE_NAME).render(**context)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def render_card(output_dir: str | os.PathLike, report: Report, *, repo_id: str | None = None,
                plots: bool = True) -> Path:
    """Write ``README.md`` (and the plots) in ``output_dir`` for ``report``; returns the card path.

    ``repo_id``: the Hub repo the model is (or will be) published to (title, usage snippet, model-index name)."""
    out = Path(output_dir)
    if repo_id is not None and not hub_id(repo_id):
        raise ConfigError(f"{repo_id!r} is not a valid Hub repo id (use owner/name)")
    images = make_plots(report, out) if plots else {}
    name = repo_id or _published_repo(report)
    model_name = name or _default_name(out)
    text = card_text(report, model_name=model_name, repo_id=name, images=images, output_dir=out)
    path = out / CARD_FILENAME
    tmp = path.with_name(f".{CARD_FILENAME}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _default_name(out: Path) -> str:
    name = out.resolve().name
    if name.startswith(".") and ".tmp-" in name:  # rendered inside the pipeline's staging directory
        name = name[1:].split(".tmp-")[0]
    return name or "pruned-model"
