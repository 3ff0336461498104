"""The card's evaluation views: benchmark table and headline, perplexity, speed (docs/evaluation.md).

Everything here reads the stored ``evaluation`` section; nothing is recomputed from a model.

- Benchmarks: with per-document scores (``evaluation.paired``, new reports) each task's main metric gets its paired
  Δ ± SE and "no measurable change" when |Δ| < 2 SE; tasks whose base score is not clearly above chance/majority
  are flagged with the reason and left out of the headline. Old reports (no per-document scores) keep the plain
  table, and the card says the tasks were not checked against their baselines.
- Speed: medians of the interleaved protocol with their spread; a speed-up beyond what the removed layers can
  explain is not shown as a result but flagged (``evaluation.speed.plausibility``); a CPU peak-RSS growth of a few
  KiB is not shown at all.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from markupsafe import Markup

from hf_layerprune.report import (
    EvalSettings, EvaluationSection, MetricResult, PairedSection, PairedTask, PerplexitySection, SpeedRecord, SpeedSection,
)
from hf_layerprune.report.results import compare, main_metric, plausibility, retentions

from hf_layerprune.card.formatting import (
    _num,
    fmt_bytes,
    fmt_count,
    fmt_delta,
    fmt_float,
    fmt_metric,
    fmt_pct_change,
    is_percent_metric,
    md,
)

MEANINGLESS_BYTES = 2**20  # a CPU peak-RSS growth below 1 MiB measures nothing


def _ordered_tasks(evaluation: EvaluationSection) -> list[str]:
    pruned = evaluation.pruned or {}
    base = evaluation.base or {}
    requested = list((evaluation.settings or EvalSettings()).tasks or [])
    names = [t for t in requested if t in pruned or t in base]
    for t in list(pruned) + list(base):
        metrics = pruned.get(t) or base.get(t) or {}
        top = not any(r.parent for r in metrics.values())
        if top and t not in names:
            names.append(t)
    return names


DISPLAY_METRIC_ORDER = ("acc", "acc_norm", "exact_match", "f1")


def _metric_order(metrics: Iterable[str]) -> list[str]:
    names = list(metrics)
    return sorted(names, key=lambda m: (DISPLAY_METRIC_ORDER.index(m) if m in DISPLAY_METRIC_ORDER else 99, m))


def _main_metric(metrics: dict[str, Any]) -> str | None:
    return main_metric(metrics) or next(iter(metrics), None)


def _settings_view(settings: EvalSettings) -> dict[str, Any]:
    limit = settings.limit
    return {
        "harness": md(f"lm-eval {settings.lm_eval_version}" if settings.lm_eval_version else "lm-eval"),
        "num_fewshot": md(settings.num_fewshot) if settings.num_fewshot is not None else None,
        "limit": md(limit) if limit is not None else None,
        "batch_size": md(settings.batch_size),
        "device": md(settings.device or "–"),
        "dtype": md(settings.dtype or "–"),
        "local": any(str(t).startswith("local_") for t in settings.tasks or []),
        "quantized": settings.quantization is not None,
    }


def _pts(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def _paired_delta(delta: float, delta_se: float, measurable: bool | None) -> Markup:
    """"−2.1 ± 0.9 pts" and, when |Δ| < z SE (`measurable` false), "(no measurable change)"."""
    text = f"{_pts(100 * delta)} ± {100 * delta_se:.1f} pts"
    if not measurable:
        text += " (no measurable change)"
    return Markup(text)


def _baseline_text(rec: PairedTask) -> Markup:
    parts = []
    if _num(rec.chance) is not None:
        parts.append(f"chance {100 * rec.chance:.1f}")
    if _num(rec.majority) is not None:
        parts.append(f"majority {100 * rec.majority:.1f}")
    return Markup(" / ".join(parts) or "–")


def evaluation_view(evaluation: EvaluationSection) -> dict[str, Any] | None:
    """Rows of the before/after table, the headline (or the plain average of old reports) and the plot's bars."""
    pruned = evaluation.pruned or {}
    base = evaluation.base or {}
    if not pruned and not base:
        return None
    paired = evaluation.paired or PairedSection()
    comparison = evaluation.comparison  # stored by the evaluation stage; reports without one: computed alike
    if comparison is None or (base and pruned and not comparison):
        written = evaluation.to_dict()
        comparison = compare(written["base"], written["pruned"]) if base else {}
    ptasks = paired.tasks or {}
    z = _num(paired.z) or 2.0
    rows, bars, kept = [], [], []
    for task in _ordered_tasks(evaluation):
        p_metrics = pruned.get(task) or {}
        b_metrics = base.get(task) or {}
        names = _metric_order(set(p_metrics) | set(b_metrics))
        main = _main_metric({m: 1 for m in names}) if names else None
        prec = ptasks.get(task)
        for metric in names:
            p, b = p_metrics.get(metric) or MetricResult(), b_metrics.get(metric) or MetricResult()
            any_rec = p or b
            higher = any_rec.higher_is_better
            pv, bv = _num(p.value), _num(b.value)
            stored = (comparison.get(task) or {}).get(metric) or {} if pv is not None and bv is not None else {}
            delta, retention = _num(stored.get("delta")), _num(stored.get("retention_pct"))
            samples, total = any_rec.samples, any_rec.samples_total
            this = prec if prec is not None and prec.metric == metric else None
            status = Markup("")
            if this is not None:
                status = Markup("in headline") if this.included else Markup("**excluded**: ") + md(this.reason)
            rows.append({
                "task": md(task),
                "metric": md(metric) + (Markup(" ↓") if higher is False else Markup("")),
                "n_shot": md(any_rec.n_shot if any_rec.n_shot is not None else "–"),
                "samples": Markup(f"{samples:,}" if samples is not None else "–")
                + (Markup(f" of {total:,}") if total is not None and samples is not None and total != samples else Markup("")),
                "base": fmt_metric(metric, bv, b.stderr) if b else Markup("–"),
                "pruned": fmt_metric(metric, pv, p.stderr) if p else Markup("–"),
                "delta": _paired_delta(this.delta, this.delta_se, this.measurable) if this else fmt_delta(metric, delta),
                "retention": Markup(f"{retention:.1f}%") if retention is not None else Markup("–"),
                "baseline": _baseline_text(this) if this else Markup("–"),
                "status": status,
            })
            if metric == main and is_percent_metric(metric) and pv is not None:
                bars.append({"label": f"{task} ({metric})", "base": bv, "pruned": pv,
                             "baseline": _num(this.baseline) if this else None, "excluded": bool(this and not this.included)})
                if retention is not None:
                    kept.append((bv, pv))
    view: dict[str, Any] = {"rows": rows, "bars": bars, "average": None, "headline": None, "has_base": bool(base),
                            "paired": bool(ptasks), "z": md(f"{z:g}"), "no_headline": None}
    head = paired.headline
    if head is not None and _num(head.retention_pct) is not None:
        rng = head.retention_range or []
        view["headline"] = {
            "count": len(head.tasks or []),
            "tasks": md(", ".join(head.tasks or [])),
            "base": fmt_metric("acc", head.base),
            "pruned": fmt_metric("acc", head.pruned),
            "delta": _paired_delta(head.delta, head.delta_se, head.measurable),
            "delta_plain": Markup(f"{_pts(100 * head.delta)} ± {100 * head.delta_se:.1f} pts"),
            "retention": Markup(f"{head.retention_pct:.1f}% ± {head.retention_se_pts:.1f}"),
            "range": Markup(f"{rng[0]:.1f}%–{rng[1]:.1f}%") if len(rng) == 2 and rng[0] != rng[1] else None,
            "measurable": bool(head.measurable),
            "excluded": [{"task": md(t), "reason": md(r)} for t, r in (head.excluded or {}).items()],
        }
    elif ptasks:  # per-doc scores, but no task is clearly above its baseline: no headline at all
        view["no_headline"] = [{"task": md(t), "reason": md(r.reason)} for t, r in ptasks.items()]
    elif len(kept) >= 2:  # an old report: the plain average, said to be unchecked
        b_avg = sum(b for b, _ in kept) / len(kept)
        p_avg = sum(p for _, p in kept) / len(kept)
        per_task = [100 * p / b for b, p in kept if b]
        view["average"] = {
            "count": len(kept),
            "base": fmt_metric("acc", b_avg),
            "pruned": fmt_metric("acc", p_avg),
            "delta": fmt_delta("acc", p_avg - b_avg),
            "retention": Markup(f"{100 * p_avg / b_avg:.1f}%") if b_avg else Markup("–"),
            "retention_value": 100 * p_avg / b_avg if b_avg else None,
            "range": Markup(f"{min(per_task):.1f}%–{max(per_task):.1f}%") if per_task else None,
        }
    return view


def perplexity_view(ppl: PerplexitySection | None) -> dict[str, Any] | None:
    ppl = ppl or PerplexitySection()
    b, p = ppl.base or None, ppl.pruned or None
    if not (b or p):
        return None
    ref = p or b
    source = ref.source or ""
    label = "WikiText-2 (raw, test)" if source.startswith("wikitext:") or source.endswith("wiki.test.raw") else os.path.basename(source) or source
    return {
        "source": md(label),
        "seq_len": md(ref.seq_len),
        "stride": md(ref.stride),
        "tokens": Markup(f"{ref.tokens:,}") if ref.tokens is not None else Markup("–"),
        "base": fmt_float(b.perplexity) if b else Markup("–"),
        "pruned": fmt_float(p.perplexity) if p else Markup("–"),
        "change": fmt_pct_change(p.perplexity, b.perplexity) if b and p else Markup("–"),
        "truncated": ref.max_tokens is not None,
    }


def _ratio(rec: dict[str, Any] | None) -> Markup:
    if not rec or _num(rec.get("median")) is None:
        return Markup("–")
    spread = _num(rec.get("spread"))
    return Markup(f"×{rec['median']:.2f}" + (f" ± {spread:.2f}" if spread is not None else ""))


def speed_view(speed: SpeedSection | None) -> dict[str, Any] | None:
    """Size rows, throughput rows (medians, with the speed-up and its spread), and the plausibility flags."""
    speed = speed or SpeedSection()
    b, p = speed.base or SpeedRecord(), speed.pruned or SpeedRecord()
    if not (b or p):
        return None
    ref = p or b
    check = speed.plausibility if speed.plausibility is not None else (plausibility(speed.to_dict()) if b and p else None)
    speedup = speed.speedup or {}
    batch, prompt, steps = ref.batch_size, ref.prompt_len, ref.decode_tokens
    rows, flags = [], []

    def row(label: str, key: str, fmt, change: Markup | None = None) -> None:
        bv, pv = getattr(b, key), getattr(p, key)
        if _num(bv) is None and _num(pv) is None:
            return
        rows.append({"label": Markup(label), "base": fmt(bv), "pruned": fmt(pv),
                     "change": change if change is not None else fmt_pct_change(pv, bv)})

    row("Decoder layers", "num_layers", lambda v: fmt_float(v, 0))
    row("Parameters", "parameters", fmt_count)
    row("Weights in memory", "weights_bytes", fmt_bytes)
    row("Weights on disk", "weights_disk_bytes", fmt_bytes)
    row("KV cache per token", "kv_cache_bytes_per_token", fmt_bytes)
    for phase, key, label in (
        ("prefill", "prefill_tokens_per_s", f"Prefill throughput (tokens/s; batch {batch} × {prompt}-token prompt)"),
        ("decode", "decode_tokens_per_s", f"Decode throughput (tokens/s; batch {batch}, {steps} steps after the prompt)"),
    ):
        flag = _flag(check, phase)
        if flag:
            flags.append(flag)
            continue  # an implausible number is not presented as a result
        if phase in speedup:
            row(label, key, lambda v: fmt_float(v, 1), _ratio(speedup.get(phase)))
        else:
            row(label, key, lambda v: fmt_float(v, 1))
    cpp = llama_cpp_rows(speed.llama_cpp, rows)
    kind = ref.peak_memory_kind
    peak = [v for v in (_num(b.peak_memory_bytes), _num(p.peak_memory_bytes)) if v is not None]
    if peak and not (kind == "cpu_rss_delta" and max(peak) < MEANINGLESS_BYTES):
        label = {"cuda_max_allocated": "Peak GPU memory (max allocated)",
                 "cuda_run_peak_above_weights": "Peak GPU memory above the weights (activations + KV cache)",
                 "cpu_rss_delta": "Peak RSS growth during the run (CPU)"}.get(kind, "Peak memory")
        row(label, "peak_memory_bytes", fmt_bytes)
    protocol = speed.protocol
    return {
        "rows": rows,
        "flags": flags,
        "bound": Markup(f"×{check['bound']:.2f}") if check else None,
        "basis": md(check.get("basis")) if check else None,
        "protocol": {"warmup": md(protocol.get("warmup")), "repeats": md(protocol.get("repeats")),
                     "threads": md(protocol.get("threads")) if protocol.get("threads") else None} if protocol else None,
        "device": md(ref.device),
        "dtype": md(ref.dtype),
        "batch_size": md(batch),
        "prompt_len": md(prompt),
        "decode_tokens": md(steps),
        "threads": md(ref.torch_threads) if ref.torch_threads else None,
        "has_base": bool(b),
        "llama_cpp": cpp,
    }


def _flag(check: dict[str, Any] | None, phase: str) -> dict[str, Any] | None:
    """What the card says of a `phase` speed-up that `plausibility` flagged (None when it is not flagged)."""
    verdict = (check or {}).get(phase) if isinstance((check or {}).get(phase), dict) else None
    if not (verdict and verdict.get("flagged")):
        return None
    spread = verdict.get("spread") or 0.0
    return {"phase": Markup(phase.capitalize()), "speedup": Markup(f"×{verdict['speedup']:.2f}"),
            "spread": Markup(f"spread {spread:.2f}" if spread else "one measurement each, no spread"),
            "bound": Markup(f"×{check['bound']:.2f}"), "basis": md(check.get("basis"))}


def llama_cpp_rows(cpp: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The GGUF files' throughput in llama.cpp (llama_cpp_speed.py), appended to `rows` marked with the runtime;
    what the card says about how they were timed."""
    if not cpp or not isinstance(cpp.get("base"), dict) or not isinstance(cpp.get("pruned"), dict):
        return None
    protocol, speedup = cpp.get("protocol") or {}, cpp.get("speedup") or {}
    check = cpp.get("plausibility") if isinstance(cpp.get("plausibility"), dict) else plausibility(cpp)
    flags = []
    for phase, label in (("prefill", f"Prompt throughput in llama.cpp (tokens/s; {protocol.get('prompt_len')}-token prompt)"),
                         ("decode", f"Generation throughput in llama.cpp (tokens/s; {protocol.get('decode_tokens')} tokens)")):
        key = f"{phase}_tokens_per_s"
        flag = _flag(check, phase)
        if flag:  # as for the transformers rows: not presented as a result
            flags.append(flag)
            continue
        if _num(cpp["base"].get(key)) is not None or _num(cpp["pruned"].get(key)) is not None:
            rows.append({"label": Markup(label), "base": fmt_float(cpp["base"].get(key), 1),
                         "pruned": fmt_float(cpp["pruned"].get(key), 1), "change": _ratio(speedup.get(phase))})
    return {"runtime": md(cpp.get("runtime")), "threads": md(protocol.get("threads")), "flags": flags,
            "warmup": md(protocol.get("warmup")), "repeats": md(protocol.get("repeats")),
            "base_file": md(cpp["base"].get("file")), "pruned_file": md(cpp["pruned"].get("file"))}


def generation_view(generation: dict[str, Any]) -> dict[str, Any] | None:
    """Generation fidelity (``evaluation.generation``, evaluation/fidelity.py): top-1 agreement and KL to the base on
    held-out text, and the long-range last-word test paired with the base; None for reports without it."""
    r = retentions(generation)
    if r is None:
        return None
    s, settings = generation["summary"], generation.get("settings") or {}
    source = str(settings.get("source") or "")
    lw = s.get("last_word") if isinstance(s.get("last_word"), dict) else None
    view = {
        "source": md("WikiText-2 (raw, test)" if source.startswith("wikitext:") or source.endswith("wiki.test.raw")
                     else os.path.basename(source) or source),
        "docs": md(s.get("docs")),
        "seq_len": md(r["seq_len"]),
        "tokens": Markup(f"{s['tokens']:,}") if isinstance(s.get("tokens"), int) else Markup("–"),
        "top1": Markup(f"{100 * r['top1']:.1f}% ± {100 * (r['top1_se'] or 0):.1f}"),
        "kl": Markup(f"{r['kl']:.3f} ± {r['kl_se'] or 0:.3f}"),
        "nll": {"base": fmt_float(s.get("nll_base"), 3), "pruned": fmt_float(s.get("nll_pruned"), 3),
                "delta": Markup(f"{s['nll_delta']:+.3f} ± {s.get('nll_delta_se') or 0:.3f}".replace("-", "−"))
                if _num(s.get("nll_delta")) is not None else Markup("–")},
        "min_context": md(settings.get("min_context")),
        "last_word": None,
    }
    if lw and _num(r.get("last_word_retention")) is not None:
        view["last_word"] = {
            "targets": md(lw.get("targets")),
            "base": fmt_metric("acc", lw["base"], lw.get("base_se")),
            "pruned": fmt_metric("acc", lw["pruned"], lw.get("pruned_se")),
            "delta": _paired_delta(lw["delta"], lw["delta_se"], lw.get("measurable")),
            "retention": Markup(f"{r['last_word_retention']:.1f}% ± {r['last_word_se'] or 0:.1f}"),
            "word_ppl": {"base": fmt_float(lw.get("word_perplexity_base"), 1),
                         "pruned": fmt_float(lw.get("word_perplexity_pruned"), 1)},
        }
    return view
