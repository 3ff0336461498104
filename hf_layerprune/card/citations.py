"""What the card says about the methods: each metric's and healer's description, tags and papers, read from
their registries (registry.py), and the bibliography, package data (``bibliography.json``) keyed by citation key.

A new metric or healer that cites a paper the bibliography lacks registers the entry with ``BIBLIOGRAPHY.register
(Citation(...))`` beside its own registration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from hf_layerprune.card.formatting import codeblock
from hf_layerprune.runtime.registry import Registry
from hf_layerprune.report import Report


@dataclass(frozen=True)
class Citation:
    name: str  # the citation key metrics and healers cite
    label: str  # "ShortGPT, Men et al., 2024"
    url: str
    bibtex: str


BIBLIOGRAPHY: Registry[Citation] = Registry("citation", "citation key")
for _key, _entry in json.loads((Path(__file__).parent / "bibliography.json").read_text(encoding="utf-8")).items():
    BIBLIOGRAPHY.register(Citation(_key, **_entry))


def metric_entry(name: Any):
    """The registry entry of metric `name` (``auto``: its selection's record), or None for unknown names."""
    if not isinstance(name, str):  # no metric (--layers): nothing to import (the registries import torch)
        return None
    from hf_layerprune.scoring import METRICS, SELECTIONS

    return SELECTIONS.get(name) or METRICS.get(name)


def heal_info(method: Any) -> tuple[str, list[str], list[str]] | None:
    """(what it does, tags, citation keys) of a healer or of a chain `linear+distill` (run in that order)."""
    if not isinstance(method, str) or method == "none":
        return None
    from hf_layerprune.healing import HEALERS

    parts = [HEALERS[m] for m in method.split("+") if m in HEALERS]
    if not parts:
        return None
    return "; then ".join(p.description for p in parts), [t for p in parts for t in p.tags], [k for p in parts for k in p.citations]


def method_names(report: Report) -> tuple[str | None, str | None]:
    """(the metric: scoring's, else the recipe's; the healing method) of a report."""
    metric = (report.scoring.metric if report.scoring else None) or (report.recipe.metric if report.recipe else None)
    return metric, report.healing.method if report.healing else None


def citation_keys(report: Report) -> list[str]:
    """The papers of the report's metric (with its selection) and healers, then the papers whose recipes the
    healers follow; each once, in that order, those the bibliography has."""
    keys: list[str] = []
    metric, method = method_names(report)
    entry = metric_entry(metric)
    if entry is not None:
        keys += entry.citation_keys(report.scoring.selection if report.scoring else None)
    info = heal_info(method)
    if info:
        from hf_layerprune.healing import HEALERS

        keys += info[2]
        keys += [k for m in str(method).split("+") if m in HEALERS for k in HEALERS[m].recipe_citations]
    return [k for i, k in enumerate(keys) if k in BIBLIOGRAPHY and k not in keys[:i]]


def citations(report: Report) -> list[dict[str, Any]]:
    return [{"key": k, "label": BIBLIOGRAPHY[k].label, "url": BIBLIOGRAPHY[k].url,
             "bibtex": codeblock(BIBLIOGRAPHY[k].bibtex, "bibtex")} for k in citation_keys(report)]


def paper_links(keys: list[str]) -> Markup:
    links = [Markup(f"[{escape(BIBLIOGRAPHY[k].label)}]({BIBLIOGRAPHY[k].url})") for k in keys if k in BIBLIOGRAPHY]
    return Markup("; ").join(links)
