"""Formatting for the card: every value reaches the template through these (escaped Markdown, code spans that
cannot be closed early, numbers with their units). Pure functions of their arguments."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from markupsafe import Markup

from hf_layerprune.report.provenance import HUB, HUB_ID, hub_id  # noqa: F401 - HUB_ID: the pattern, re-exported for the card

PERCENT_METRICS = ("acc", "acc_norm", "exact_match", "em", "f1", "mc1", "mc2", "accuracy")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}|~$])")


def md(value: Any) -> Markup:
    """Text for inline Markdown: one line; the characters that start Markdown syntax (emphasis, code, links,
    tables, math, strikethrough) backslash-escaped, then ``& < >`` HTML-escaped so no tag or entity survives."""
    if value is None:
        return Markup("")
    if isinstance(value, Markup):
        return value
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))
    return Markup(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def code(value: Any) -> Markup:
    """An inline code span that the value cannot close (fence longer than any backtick run in it)."""
    text = " ".join(str(value).split())
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or longest else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def codeblock(value: Any, lang: str = "") -> Markup:
    """A fenced code block the value cannot close (content is literal: no HTML or Markdown inside)."""
    text = str(value).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`{3,}|~{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    lang = re.sub(r"[^a-z0-9]", "", lang.lower())
    return Markup(f"{fence}{lang}\n{text}\n{fence}")


def model_link(value: Any) -> Markup:
    """[`org/name`](https://huggingface.co/org/name) for Hub ids, a code span otherwise."""
    rid = hub_id(value)
    if rid:
        return Markup(f"[{code(rid)}]({HUB}/{rid})")
    text = str(value)
    if text.startswith(("/", "~", "./", "../")) or "\\" in text:  # a local path: its name, not the author's disk layout
        return code(text.replace("\\", "/").rstrip("/").rpartition("/")[2]) + Markup(" (a local checkpoint)")
    return code(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt_count(value: Any) -> Markup:
    """1234567 -> 1.23M."""
    v = _num(value)
    if v is None:
        return Markup("–")
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return Markup(f"{v / div:.3g}{unit}")
    return Markup(f"{v:.0f}")


def fmt_bytes(value: Any) -> Markup:
    v = _num(value)
    if v is None:
        return Markup("–")
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(v) >= div:
            return Markup(f"{v / div:.2f} {unit}")
    return Markup(f"{v:.0f} B")


def fmt_float(value: Any, digits: int = 2) -> Markup:
    v = _num(value)
    return Markup("–") if v is None else Markup(f"{v:,.{digits}f}")


def fmt_pct_change(new: Any, old: Any) -> Markup:
    a, b = _num(new), _num(old)
    if a is None or b is None or b == 0:
        return Markup("–")
    return Markup(f"{100 * (a - b) / b:+.1f}%".replace("-", "−"))


def is_percent_metric(metric: str) -> bool:
    return metric.split(",")[0] in PERCENT_METRICS


def fmt_metric(metric: str, value: Any, stderr: Any = None) -> Markup:
    v = _num(value)
    if v is None:
        return Markup("–")
    scale, digits = (100.0, 1) if is_percent_metric(metric) else (1.0, 3 if abs(v) < 10 else 2)
    text = f"{v * scale:.{digits}f}"
    s = _num(stderr)
    if s is not None:
        text += f" ± {s * scale:.{digits}f}"
    return Markup(text)


def fmt_delta(metric: str, delta: Any) -> Markup:
    d = _num(delta)
    if d is None:
        return Markup("–")
    if is_percent_metric(metric):
        return Markup(f"{100 * d:+.1f} pts".replace("-", "−"))
    return Markup(f"{d:+.3g}".replace("-", "−"))


def fmt_layers(indices: Iterable[Any] | None) -> Markup:
    """[21, 22, 23, 27] -> `21–23, 27` (0-based ranges)."""
    values = sorted({int(i) for i in indices or [] if isinstance(i, int) or (isinstance(i, str) and i.isdigit())})
    if not values:
        return Markup("none")
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}–{prev}" if prev > start else f"{start}")
        if v is not None:
            start = prev = v
    return Markup(", ".join(parts))


def slug(value: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")[:64]
