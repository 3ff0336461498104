"""The closing summary of a run, built from its report: what was removed, sizes before → after, per-stage time and
peak memory, the headline quality figure, where the output is, and the next command."""

from __future__ import annotations

from typing import Any

GiB = 1024**3


def _count(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return str(value)


def _change(before: Any, after: Any) -> str:
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        return f" ({100 * (after - before) / before:+.1f}%)"
    return ""


def quality_line(report: dict[str, Any]) -> str | None:
    """The headline as the card states it: accuracy retained (with its paired SE when stored), generation fidelity
    (last-word retention with its paired SE, top-1 agreement, KL), perplexity."""
    if not report.get("evaluation"):  # nothing measured (and the evaluation package imports torch)
        return None
    from hf_layerprune.report.results import headline
    from hf_layerprune.report.results import retentions

    h = headline(report)
    parts = []
    stored = ((report.get("evaluation") or {}).get("headline") or {})
    if isinstance(stored.get("retention_pct"), (int, float)):
        se = stored.get("retention_se_pct") or stored.get("se_pct")
        parts.append(f"{stored['retention_pct']:.1f}% of the base accuracy" + (f" ± {se:.1f}" if se else ""))
    elif h.get("retention_pct") is not None:
        parts.append(f"{h['retention_pct']:.1f}% of the base accuracy over {h['accuracy_tasks']} task(s)")
    g = retentions((report.get("evaluation") or {}).get("generation"))
    if g is not None:  # the generation retention beside the multiple-choice one
        text = f"generation: top-1 agreement {100 * g['top1']:.1f}%, KL {g['kl']:.3f}"
        if g.get("last_word_retention") is not None:
            text = (f"generation: {g['last_word_retention']:.1f}% ± {g['last_word_se'] or 0:.1f} of the base last-word "
                    f"accuracy, top-1 agreement {100 * g['top1']:.1f}%, KL {g['kl']:.3f}")
        parts.append(text)
    if h.get("perplexity") is not None:
        base = f"{h['perplexity_base']:.2f} → " if h.get("perplexity_base") is not None else ""
        parts.append(f"perplexity {base}{h['perplexity']:.2f}")
    return "; ".join(parts) or None


def removed_text(report: dict[str, Any], counts: bool = True) -> str:
    """What was removed: `[20, 21] (2 of 30)`, or for a sub-layer cut `attention of [3, 7] (2 of 30)` (and the
    MLPs and whole layers when there are any); `counts=False` leaves out the "(2 of 30)"."""
    before = report.get("num_layers_before") if counts else None

    def listed(indices: list) -> str:
        return f"{indices}" + (f" ({len(indices)} of {before})" if before else "")

    sub = report.get("removed_sublayers")
    if not isinstance(sub, dict):
        removed = report.get("removed_layers")
        return listed(removed) if isinstance(removed, list) else f"{removed}"
    whole = set(report.get("removed_layers") or [])
    parts = [f"{label} of {listed([i for i in sub.get(key) or [] if i not in whole])}"
             for key, label in (("attention", "attention"), ("mlp", "MLP")) if set(sub.get(key) or []) - whole]
    if whole:
        parts.append(f"whole layers {listed(sorted(whole))}")
    return "; ".join(parts) or "nothing"


def collection_note(report: dict[str, Any]) -> str:
    """A variant's note in a Hub collection: depth, parameters and the headline quality numbers."""
    before, after = report.get("num_layers_before"), report.get("num_layers_after")
    note = (f"{after} of {before} layers, {_count(report.get('parameters_after'))} parameters"
            f"{_change(report.get('parameters_before'), report.get('parameters_after'))}")
    quality = quality_line(report)
    return note + (f"; {quality}" if quality else "")


def rows(report: dict[str, Any], output: str | None, next_command: str | None) -> list[tuple[str, str]]:
    before, after = report.get("num_layers_before"), report.get("num_layers_after")
    out = [
        ("removed", removed_text(report)),
        ("layers", f"{before} → {after}"),
        ("parameters", f"{_count(report.get('parameters_before'))} → {_count(report.get('parameters_after'))}"
                       f"{_change(report.get('parameters_before'), report.get('parameters_after'))}"),
    ]
    method = (report.get("scoring") or {}).get("metric")
    healer = (report.get("healing") or {}).get("method")
    if method or healer:
        out.append(("chosen by / healed with", f"{method or 'given layers'} / {healer or 'none'}"))
    quality = quality_line(report)
    if quality:
        out.append(("quality", quality))
    timings = report.get("timings") or {}
    memory = ((report.get("memory") or {}).get("stages") or {})
    if timings:
        cells = []
        for name, seconds in timings.items():
            peak = (memory.get(name) or {})
            peak = peak.get("peak_cuda_bytes") or peak.get("peak_rss_bytes")
            cells.append(f"{name} {seconds:.0f}s" + (f" ({peak / GiB:.1f} GiB)" if peak else ""))
        out.append(("time (peak memory) per stage", ", ".join(cells)))
    total = (report.get("memory") or {}).get("peak_over_weights")
    if total:
        out.append(("peak memory", f"{total:.2f} × the weights"))
    if output:
        out.append(("output", output))
    if next_command:
        out.append(("next", next_command))
    return out


def closing(report: dict[str, Any], output: str | None = None, next_command: str | None = None):
    """(a rich Table to print, the same facts as a dict for the JSON log)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="hf-layerprune summary", show_header=False, title_justify="left", expand=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    facts = rows(report, output, next_command)
    for key, value in facts:
        table.add_row(key, Text(str(value)))
    return table, dict(facts)
