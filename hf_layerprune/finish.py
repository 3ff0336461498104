"""The bookkeeping around the stages: `Timer` (seconds and peak memory per stage) and `write_outputs`, every
route's last step (the recipe, versions, timings and memory go into the report; layerprune.json and the card are
written into the staging folder)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hf_layerprune import progress
from hf_layerprune.memory import MemoryMeter
from hf_layerprune.recipe import Recipe
from hf_layerprune.report import Report, library_versions, write_report


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
    from hf_layerprune.checkpoint import drop_dangling_auto_map

    drop_dangling_auto_map(tmp)  # the output carries no code of the source's: no auto_map pointing at it
    report.recipe = recipe.to_dict()
    report.versions = library_versions()
    report.timings = timer.timings
    report.memory = timer.memory.record(timer.weight_bytes)
    card(tmp, report, model=recipe.model)


def card(folder: str | Path, report: Report | dict[str, Any], *, model: str | None = None) -> Path:
    """Write `layerprune.json` and render the model card (README.md, plots) from it; returns the card path.
    `model`: the recipe's model path, whose README.md gives a local base's licence."""
    from hf_layerprune.card import record_base_card, render_card

    write_report(folder, report)
    local_card = Path(model) / "README.md" if model else None
    base_card = local_card if local_card and local_card.is_file() else None
    with progress.stage("card"):
        record_base_card(folder, base_card=base_card)  # the licence, kept in layerprune.json (the path is not)
        return render_card(folder, base_card=base_card)
