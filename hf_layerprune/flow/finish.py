"""The bookkeeping around the stages: `Timer` (seconds and peak memory per stage) and `write_outputs`, every
route's last step (the recipe, versions, timings and memory go into the report; layerprune.json and the card are
written into the staging folder).

The base model's card is looked up once per run (`look_up_base_card`: the GGUF's `general.license` and the card
share it, kept in `Report.base_card`); `card` writes layerprune.json once and renders the card from the report as
written, never reading the file back. `rerender` is the other way in: a folder's layerprune.json read once with
`Report.from_dict` (`hf-layerprune card`, tests)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hf_layerprune.runtime import progress
from hf_layerprune.flow.memory import MemoryMeter
from hf_layerprune.recipe import Recipe
from hf_layerprune.card import render_card
from hf_layerprune.runtime.errors import CheckpointError, ConfigError
from hf_layerprune.hub import find_base_card, license_from_card_file
from hf_layerprune.report.provenance import CARD_FILENAME, hub_id
from hf_layerprune.report import (
    BaseCard,
    MemorySection,
    RecipeSection,
    Report,
    Timings,
    Versions,
    library_versions,
    load_report,
    write_report,
)


class Timer:
    """Seconds and peak memory (memory.MemoryMeter) per stage; `weight_bytes` is what the peak is compared with."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.memory = MemoryMeter()
        self.weight_bytes: int | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with progress.stage(name), self.memory.stage(name):  # progress: shown live by the CLI's display
                yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def write_outputs(tmp: Path, report: Report, recipe: Recipe, timer: Timer) -> None:
    from hf_layerprune.surgery.checkpoint import drop_dangling_auto_map

    drop_dangling_auto_map(tmp)  # the output carries no code of the source's: no auto_map pointing at it
    report.recipe = RecipeSection.from_dict(recipe.to_dict())
    report.versions = Versions.from_dict(library_versions())
    report.timings = Timings.from_dict(timer.timings)
    report.memory = MemorySection.from_dict(timer.memory.record(timer.weight_bytes))
    card(tmp, report, model=recipe.model)


def local_card(model: str | None) -> Path | None:
    """The README.md of a local base model folder (the recipe's model), which gives its licence."""
    path = Path(model) / CARD_FILENAME if model else None
    return path if path is not None and path.is_file() else None


def look_up_base_card(report: Report, *, model: str | None = None) -> BaseCard | None:
    """The base model's card, looked up once per run (`report.base_card` holds it from then on, also when none was
    found): a local base's README.md (`model`: the recipe's model path), else hub.find_base_card."""
    if report.base_card_looked_up:
        return report.base_card
    report.base_card = base_card_info(report, base_card=local_card(model))
    report.base_card_looked_up = True
    return report.base_card


def base_card_info(report: Report, *, base_card: str | os.PathLike | None = None,
                   online: bool | None = None) -> BaseCard | None:
    """The base model's license fields: from ``base_card`` (a card file), else as recorded in the report, else
    looked up (hub.find_base_card); None when unknown."""
    recorded = report.base_card
    if base_card is not None:
        return BaseCard.from_dict(license_from_card_file(base_card))
    if recorded is not None and recorded.license:
        return recorded
    found = find_base_card(report.source.base_model, report.source.base_revision, online=online)
    return BaseCard.from_dict(found) if found else recorded


def card(folder: str | Path, report: Report, *, model: str | None = None) -> Path:
    """Write `layerprune.json` (once) and render the model card (README.md, plots) from the report as written;
    returns the card path. `model`: the recipe's model path, whose README.md gives a local base's licence."""
    look_up_base_card(report, model=model)
    written = write_report(folder, report)
    with progress.stage("card"):
        return render_card(folder, written)


def rerender(output_dir: str | os.PathLike, *, repo_id: str | None = None, base_card: str | os.PathLike | None = None,
             plots: bool = True, online: bool | None = None, remember: bool = False) -> Path:
    """Re-render the card of an output folder from its `layerprune.json` (read once, `Report.from_dict`): the base
    card from `base_card` (a card file), as recorded, or looked up (`online`: allow the Hub API; None: unless
    HF_HUB_OFFLINE). `remember`: a newly found licence is kept in `layerprune.json` for later offline renders."""
    out = Path(output_dir)
    try:
        report = load_report(out)
    except FileNotFoundError:
        raise CheckpointError(f"{out} has no layerprune.json; is it a hf-layerprune output directory?") from None
    if repo_id is not None and not hub_id(repo_id):
        raise ConfigError(f"{repo_id!r} is not a valid Hub repo id (use owner/name)")
    recorded = report.base_card
    report.base_card = base_card_info(report, base_card=base_card, online=online)
    if remember and report.base_card is not None and report.base_card.license and report.base_card != recorded:
        report = write_report(out, report)
    return render_card(out, report, repo_id=repo_id, plots=plots)
