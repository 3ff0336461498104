"""The run record, `layerprune.json`, written beside the weights; the model card is rendered from it alone.

It is a plain JSON object so that other tools can read it without this package. Top-level keys (see
docs/report.md for the full schema); every stage adds its own section and never rewrites another's:

- ``format_version`` (int), ``tool`` ({name, version}), ``command`` (the exact CLI line, token-free)
- ``base_model`` (Hub id, local path or GGUF path as given), ``base_revision`` (commit sha or null),
  ``model_type``, ``dtype``
- ``world_size`` (int, only when several processes ran: torchrun / accelerate launch)
- ``granularity`` ("block" | "attention" | "mlp"), ``num_layers_before``, ``num_layers_after``,
  ``removed_layers`` and ``kept_layers`` (0-based indices into the base model),
  ``removed_sublayers`` ({"attention": [...], "mlp": [...]} for sub-layer pruning, else absent)
- ``parameters_before``, ``parameters_after``
- ``recipe``: the Recipe as a dict (reproduces the run)
- ``scoring``: {metric, selection, granularity, calibration: {...}, scores: {...}, ...}   (scoring stage)
- ``healing``: {method, steps, tokens, seconds, losses: [...], ...}                           (healing stage)
- ``evaluation``: {settings, base: {...}, pruned: {...}, comparison, samples (per-doc scores of both), paired
  (per-task Δ ± paired SE, chance/majority, headline), perplexity, speed ({base, pruned, protocol, speedup,
  plausibility})}                                                                              (evaluation stage)
- ``versions``: library versions; ``timings``: seconds per stage
- ``provenance``: the base model as Hub id + commit or local file name + sha256, and the local input files
  (provenance.py). No absolute path of the machine is written: ``write_report`` passes every report through
  ``provenance.portable_report``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

REPORT_FILENAME = "layerprune.json"
# a JSON array of plain numbers, one per line as indent=2 writes it: kept on one line (per-doc scores, layer scores)
_NUMBER_LIST = re.compile(r"\[\n\s+(-?[\d.eE+-]+(?:,\n\s+-?[\d.eE+-]+)*)\n\s*\]")
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hf-layerprune", "torch", "transformers", "huggingface_hub", "peft", "lm_eval", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def read_report(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / REPORT_FILENAME
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_report(directory: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write ``layerprune.json`` (atomically), local paths replaced by names and hashes (provenance.py)."""
    from hf_layerprune.provenance import portable_report

    _remember_base_card(report)
    report = portable_report(report)
    path = Path(directory) / REPORT_FILENAME
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(report, indent=2, sort_keys=False, default=_json_default)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n")
    os.replace(tmp, path)
    return path


def _remember_base_card(report: dict[str, Any]) -> None:
    """A local base model's license must be read before its path is dropped from the report."""
    base = report.get("base_model")
    if report.get("base_card") or not isinstance(base, str) or not os.path.exists(os.path.expanduser(base)):
        return
    from hf_layerprune.card import find_base_card

    try:
        info = find_base_card(report, online=False)
    except Exception:  # noqa: BLE001 - an unreadable card only means "license unknown"
        info = None
    if info and info.get("license"):
        report["base_card"] = {k: v for k, v in info.items() if not k.startswith("_")}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
