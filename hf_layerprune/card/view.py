"""The card's view of a report: everything the template shows, built from the report alone and already escaped
and formatted (the template adds only structure). Evaluation views: evaluation.py; method descriptions and
papers: citations.py (from the registries); numbers and escaping: formatting.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from hf_layerprune.card.citations import citations, heal_info, metric_entry, paper_links
from hf_layerprune.card.evaluation import _settings_view, evaluation_view, generation_view, perplexity_view, speed_view
from hf_layerprune.card.formatting import (
    _num,
    code,
    codeblock,
    fmt_bytes,
    fmt_count,
    fmt_float,
    fmt_layers,
    fmt_metric,
    fmt_pct_change,
    hub_id,
    md,
    model_link,
)
from hf_layerprune.card.metadata import _gguf_only, format_record
from hf_layerprune.runtime.formats import OUTPUT_FORMATS
from hf_layerprune.report import (
    BaseCard,
    EvalSettings,
    EvaluationSection,
    ExportSection,
    HealingSection,
    JudgedWith,
    Provenance,
    RecipeSection,
    Report,
    ScoresRecord,
    ScoringSection,
)

PLOT_FILES = {  # the pictures the card can show, drawn beside it by render.make_plots
    "scores": "layerprune_scores.png",
    "healing": "layerprune_healing_loss.png",
    "evaluation": "layerprune_evaluation.png",
}


def build_context(report: Report, *, model_name: str, repo_id: str | None, license_link: str | None,
                  images: dict[str, str], output_dir: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, already escaped/formatted (the template adds only structure)."""
    import yaml

    source, cut = report.source, report.cut
    base = source.base_model
    n_before, n_after = source.num_layers_before, cut.num_layers_after if cut else None
    removed = list(cut.removed_layers) if cut else []
    kept = list(cut.kept_layers) if cut else []
    sub = (cut.removed_sublayers if cut else None) or {}
    p_before, p_after = _num(source.parameters_before), _num(cut.parameters_after if cut else None)
    scoring = report.scoring or ScoringSection()
    healing = report.healing or HealingSection()
    evaluation = report.evaluation or None
    export = (cut.export if cut else None) or ExportSection()
    recipe = report.recipe or RecipeSection()
    decilm = str(export.format).lower() == "decilm"

    metric = scoring.metric or recipe.metric
    entry = metric_entry(metric)
    metric_what = entry.description if entry is not None else None
    judged = scoring.judged_with or JudgedWith()
    described = {"kl_to_base": "description_kl", "last_word_nll": "description_long_range"}.get(judged.objective or "")
    if described and getattr(entry, described, None):  # `auto` since issue 35
        metric_what = getattr(entry, described)
    chosen = scoring.chosen_metric
    if metric == "auto" and chosen is not None and entry is not None:  # name the metric whose selection won
        metric_what = f"{metric_what}; here the {chosen} selection won"
    heal_method = healing.method if healing.method not in (None, "none") else None
    healer = heal_info(heal_method)
    if healing.stages is not None:  # a chain: show the trained stage's settings beside the totals
        healing = healing.with_stage_settings()
    calibration = scoring.calibration or None

    ev = evaluation_view(evaluation) if evaluation else None
    ppl = perplexity_view(evaluation.perplexity) if evaluation else None
    speed = speed_view(evaluation.speed) if evaluation else None

    kv = export.kv_cache_bytes_per_token
    kv_view = None
    if kv is not None and (_num(kv.get("before")) is not None or _num(kv.get("after")) is not None):
        kv_view = {"before": fmt_bytes(kv.get("before")), "after": fmt_bytes(kv.get("after")),
                   "change": fmt_pct_change(kv.get("after"), kv.get("before"))}

    load_id = repo_id or _published_repo(report) or f"./{model_name}"
    usage = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"model_id = {json.dumps(str(load_id))}\n"
        "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        f"model = AutoModelForCausalLM.from_pretrained(model_id, dtype=\"auto\", device_map=\"auto\"{', trust_remote_code=True' if decilm else ''})\n\n"
        "inputs = tokenizer(\"The capital of France is\", return_tensors=\"pt\").to(model.device)\n"
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0], skip_special_tokens=True))"
    )

    recipe_yaml = None
    if report.recipe:
        clean = {k: v for k, v in recipe.to_dict().items() if k not in ("output_dir", "overwrite") and v not in (None, [], {})}
        recipe_yaml = codeblock(yaml.safe_dump(clean, sort_keys=False, allow_unicode=True), "yaml")

    info = report.base_card or BaseCard()
    license_text = None
    if info.license:
        name = info.license_name if info.license == "other" and info.license_name else info.license
        link = license_link
        license_text = Markup(f"[{code(name)}]({escape(link)})") if link and re.match(r"^[\w./:%#?=&~+-]+$", link) else code(name)

    settings = (evaluation.settings if evaluation else None) or EvalSettings()
    limit = settings.limit if evaluation else None
    param_change = None
    if p_before and p_after is not None:
        param_change = Markup(f"{100 * (p_after - p_before) / p_before:+.1f}%".replace("-", "−"))
    evaluation = evaluation or EvaluationSection()
    ctx: dict[str, Any] = {
        "title": md(model_name),
        "base_link": _base_link(report) if base else None,
        "base_revision": code(source.base_revision) if source.base_revision is not None else None,
        "granularity": report.granularity or "block",
        "n_before": md(n_before) if n_before is not None else None,
        "n_after": md(n_after) if n_after is not None else None,
        "n_removed": md(len(removed)) if removed else None,
        "removed_list": code(json.dumps(removed)) if removed else None,
        "removed_ranges": fmt_layers(removed) if removed else None,
        "kept_list": code(json.dumps(kept)) if kept else None,
        "kept_ranges": fmt_layers(kept) if kept else None,
        "sublayers": [{"kind": md(k), "list": code(json.dumps(v)), "ranges": fmt_layers(v), "count": len(v)} for k, v in sub.items() if v],
        "p_before": fmt_count(p_before) if p_before else None,
        "p_after": fmt_count(p_after) if p_after else None,
        "p_change": param_change,
        "model_type": code(source.model_type) if source.model_type else None,
        "dtype": code(source.dtype) if source.dtype else None,
        "metric": code(metric) if metric else None,
        "metric_what": md(metric_what) if entry is not None else None,
        "metric_papers": paper_links(list(entry.citations)) if entry is not None else None,
        "selection": md(scoring.selection) if scoring.selection else None,
        "higher_is_more_important": scoring.higher_is_more_important,
        "calibration": {
            "source": code(calibration.source) if calibration.source else None,
            "samples": md(calibration.samples) if calibration.samples is not None else None,
            "seq_len": md(calibration.seq_len) if calibration.seq_len is not None else None,
            "seed": md(calibration.seed) if calibration.seed is not None else None,
            "self": calibration.kind == "self" or calibration.source == "self",
        } if calibration else None,
        "scores_table": _scores_table(scoring.scores, set(removed), sub),
        "candidates_table": _candidates_table(scoring, removed),
        "healing": {
            "method": code(heal_method),
            "what": md(healer[0]) if healer else None,
            "papers": paper_links(healer[2]) if healer else None,
            "fields": [
                {"name": Markup(label), "value": fmt(healing.get(key)) if fmt else _before_after(healing, key)}
                for label, key, fmt in (
                    ("Steps", "steps", lambda v: md(v)),
                    ("Tokens", "tokens", fmt_count),
                    ("Learning rate", "learning_rate", lambda v: md(v)),
                    ("LoRA rank", "lora_rank", lambda v: md(v)),
                    ("Target modules", "targets", lambda v: code(", ".join(map(str, v)) if isinstance(v, list) else v)),
                    ("Trained layers", "runs", _absorb_runs),
                    ("Data", "data", lambda v: code(v.get("source") if isinstance(v, dict) else v)),
                    ("Loss before → after", "loss", None),
                    ("KL to the base model before → after", "kd", None),
                    ("Intermediate-state loss before → after", "hidden", None),
                    ("Kept", "reverted", lambda v: md("no: undone, it raised the held-out loss" if v else "yes")),
                    ("Wall time", "seconds", lambda v: md(f"{_num(v) / 60:.1f} min") if _num(v) is not None else md("–")),
                )
                if (fmt is None and _before_after(healing, key) is not None)
                or (fmt is not None and healing.get(key) not in (None, "", [], {}))
            ],
        } if heal_method else None,
        "evaluation": ev,
        "eval_settings": _settings_view(settings) if report.evaluation else None,
        "perplexity": ppl,
        "perplexity_skipped": md(evaluation.perplexity_skipped) if evaluation.perplexity_skipped else None,
        "generation": generation_view(evaluation.generation or {}) if report.evaluation else None,
        "generation_skipped": md(evaluation.generation_skipped) if evaluation.generation_skipped else None,
        "speed": speed,
        "sweep": _sweep_view(report, output_dir),
        "rounds": [
            {"round": md(r.get("round", i + 1)), "removed": code(json.dumps(r.removed_layers or [])),
             "healed": bool(r.healing)}
            for i, r in enumerate(report.rounds)
        ] if report.rounds is not None and len(report.rounds) > 1 else [],
        "kv": kv_view,
        "decilm": decilm,
        "usage": codeblock(usage, "python") if not _gguf_only(report) else None,
        "gguf": _gguf_view(report, str(report.gguf_repo or load_id)),
        "format_usage": _format_usage(report, str(load_id)),
        "command": codeblock(report.command, "bash") if report.command else None,
        "base_scores_from": md(evaluation.base_scores_from) if evaluation.base_scores_from else None,
        "eval_command": codeblock(evaluation.command, "bash") if evaluation.command else None,
        "inputs": _inputs(report),
        "recipe_yaml": recipe_yaml,
        "world_size": md(report.world_size) if (report.world_size or 0) > 1 else None,
        "versions": [{"name": md(k), "version": md(v)} for k, v in report.versions.items.items()] if report.versions else [],
        "citations": citations(report),
        "license": license_text,
        "license_source": md(info.source) if info.license and info.source else None,
        "gated": bool(info.gated),
        "limit": md(limit) if limit is not None else None,
        "images": {k: (Markup(escape(images[k])) if images.get(k) else None) for k in PLOT_FILES},
        "tool_version": md(report.tool.get("version")) if isinstance(report.tool, dict) else None,
    }
    return ctx


def _absorb_runs(runs) -> Markup:
    """`absorb`'s record: which kept layers absorbed which removed layers."""
    parts = [f"{', '.join(map(str, r.get('layers') or []))} (for removed {', '.join(map(str, r.get('removed') or []))})"
             for r in runs if isinstance(r, dict)]
    return md("; ".join(parts))


def _format_usage(report: Report, load_id: str) -> list[Markup]:
    """How to load the output formats with a usage block of their own (formats.OUTPUT_FORMATS; safetensors and
    GGUF have the card's built-in sections): one Markdown block each, for the formats whose record is in the
    report."""
    blocks = []
    for entry in OUTPUT_FORMATS.values():
        record = format_record(report, entry)
        if entry.usage and record is not None:
            text = entry.call("usage", record, load_id)
            if text:
                blocks.append(Markup(text))
    return blocks


def _gguf_view(report: Report, load_id: str) -> dict[str, Any] | None:
    """The GGUF file of the output: how it was made and how to run it (llama.cpp, Ollama, transformers)."""
    info = report.gguf
    if info is None or info.file is None:
        return None
    name = info.file
    if info.route == "export":
        how = f"exported as {info.type or '?'} with the `gguf` package's tensor names"
    else:
        requantized = info.requantized or {}
        how = "cut from the source GGUF: the kept tensors' quantized blocks are copied byte for byte"
        if requantized:
            changes = sorted({f"{v.get('from')} → {v.get('to')}" for v in requantized.values() if isinstance(v, dict)})
            how += f"; {len(requantized)} tensors changed by healing were re-quantized ({', '.join(changes)})"
        if info.per_layer_keys:
            how += "; per-layer metadata sliced: " + ", ".join(f"`{k}`" for k in info.per_layer_keys)
    how = md(how)
    if report.gguf_of:
        how += Markup("; the GGUF build of ") + model_link(report.gguf_of)
    if report.gguf_repo:  # published in a repo of its own (push --format both)
        how += Markup("; published in its own repo, ") + model_link(report.gguf_repo)
    hub = "/" in load_id and not load_id.startswith(".")
    usage = f"llama-cli -m {name} -p \"The capital of France is\"\n"
    if hub:
        usage = f"llama-cli -hf {load_id} -p \"The capital of France is\"\nollama run hf.co/{load_id}\n"
    if info.architecture != "deci":  # transformers' GGUF loader has no deci (sub-layer) architecture
        usage += ("python -c 'from transformers import AutoModelForCausalLM; "
                  f"AutoModelForCausalLM.from_pretrained({json.dumps(str(load_id))}, gguf_file={json.dumps(name)})'")
    else:
        how += Markup(" (llama.cpp's `deci` architecture: blocks without attention keep no KV cache)")
    return {"file": code(name), "how": how, "usage": codeblock(usage, "bash")}


def _scores_table(scores: ScoresRecord | None, removed: set[int], sub: dict[str, list[int]]) -> list[dict[str, Markup]]:
    values, unit = None, None
    if scores is not None and scores.per_layer is not None:
        values = scores.per_layer
    elif scores is not None and scores.per_unit is not None:
        values, unit = scores.per_unit, scores.unit
    if not values:
        return []
    gone = set(sub.get(unit) or []) if unit else removed
    return [
        {"layer": Markup(str(i)), "score": fmt_float(v, 4), "removed": Markup("removed" if i in gone else "")}
        for i, v in enumerate(values)
    ]


def _candidates_table(scoring: ScoringSection, removed: list[int]) -> dict[str, Any] | None:
    """`auto`'s judged candidates, best first by what decided (the long-range judge, else the KL); None when
    nothing was judged."""
    judged = scoring.judged_with
    rows = [c for c in scoring.candidates or [] if c.held_out_kl is not None]
    if judged is None or len(rows) < 2:
        return None
    words = judged.objective == "last_word_nll" and all(c.last_word_nll is not None for c in rows)
    rows.sort(key=lambda c: (c.last_word_nll if words else 0.0, c.held_out_kl))
    return {
        "words": words,
        "heal": code(judged.heal or "none"),
        "healed": (judged.heal or "none") != "none",
        "docs": judged.long_range_docs,
        "rows": [{
            "who": md(", ".join(c.metrics)),
            "layers": fmt_layers(c.selected),
            "nll": fmt_float(c.last_word_nll, 3) if words else None,
            "accuracy": Markup(f"{100 * c.last_word_accuracy:.1f}%") if words and c.last_word_accuracy is not None else Markup("–"),
            "kl": fmt_float(c.held_out_kl, 3),
            "chosen": Markup("**chosen**" if list(c.selected) == list(removed) else ""),
        } for c in rows],
    }


def _sweep_view(report: Report, output_dir: Path | None) -> dict[str, Any] | None:
    """The depth sweep this model belongs to (``report.sweep``, written by sweep.py): plot and one row per variant."""
    sweep = report.sweep
    if sweep is None or not sweep.points:
        return None
    plot = sweep.plot
    if not (plot is not None and re.fullmatch(r"[\w.-]+\.png", plot) and (output_dir is None or (output_dir / plot).is_file())):
        plot = None
    current = output_dir.name if output_dir is not None else None
    removed = report.cut.removed_layers if report.cut else None
    rows = []
    for p in sorted(sweep.points, key=lambda p: -(_num(p.parameters) or 0)):
        this = p.output == current or p.removed_layers == removed
        rows.append({
            "name": Markup("**this model**") if this else md(p.output),
            "layers": md(p.num_layers_after),
            "removed": fmt_layers(p.removed_layers),
            "parameters": fmt_count(p.parameters),
            "accuracy": fmt_metric("acc", p.mean_accuracy),
            "perplexity": fmt_float(p.perplexity),
        })
    return {"plot": Markup(escape(plot)) if plot else None, "rows": rows,
            "has_accuracy": any(_num(p.mean_accuracy) is not None for p in sweep.points),
            "has_perplexity": any(_num(p.perplexity) is not None for p in sweep.points)}


def _base_link(report: Report) -> Markup:
    """The base model: a Hub link, or a local file's name and the start of its sha256 (the full one is under
    Reproduce)."""
    record = report.provenance.base_model if report.provenance is not None else None
    if record is not None and record.sha256 and not hub_id(report.source.base_model):
        return code(record.name) + Markup(" (a local file, sha256 ") + code(record.sha256[:12] + "…") + Markup(")")
    return model_link(report.source.base_model)


def _inputs(report: Report) -> list[dict[str, Markup]]:
    """Base model and local input files with their hashes (``provenance``)."""
    record = report.provenance or Provenance()
    out = []
    base = record.base_model
    if base is not None:
        sha = code(base.sha256) if base.sha256 else None
        if base.files:  # a local directory: each weight/config file's hash
            sha = Markup("; ").join(code(name) + Markup(" ") + (code(h) if isinstance(h, str) else md(f"{h.get('bytes')} bytes"))
                                    for name, h in base.files.items())
        out.append({"role": Markup("base model"), "name": code(base.hub_id or base.name), "sha": sha,
                    "commit": code(base.commit) if base.commit else None})
    for f in record.files or []:
        if f.name:
            out.append({"role": md(f.role or "file"), "name": code(f.name),
                        "sha": code(f.sha256) if f.sha256 else None, "commit": None})
    return out


def _before_after(healing: HealingSection, stem: str) -> Markup | None:
    """"a → b" from the record's `<stem>_before` / `<stem>_after` (held-out loss, KL, ...); None when neither is there."""
    before, after = healing.get(f"{stem}_before"), healing.get(f"{stem}_after")
    if _num(before) is None and _num(after) is None:
        return None
    return Markup(f"{fmt_float(before, 4)} → {fmt_float(after, 4)}")


def _published_repo(report: Report) -> str | None:
    """The repo id recorded by the publish stage (``report.hub["repo_id"]``), when it is a valid id."""
    return hub_id(report.hub.get("repo_id")) if report.hub is not None else None
