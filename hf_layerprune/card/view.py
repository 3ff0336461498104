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
from hf_layerprune.card.metadata import _gguf_only
from hf_layerprune.formats import OUTPUT_FORMATS

PLOT_FILES = {  # the pictures the card can show, drawn beside it by render.make_plots
    "scores": "layerprune_scores.png",
    "healing": "layerprune_healing_loss.png",
    "evaluation": "layerprune_evaluation.png",
}


def build_context(report: dict[str, Any], *, model_name: str, repo_id: str | None,
                  license_info: dict[str, Any] | None, images: dict[str, str],
                  output_dir: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, already escaped/formatted (the template adds only structure)."""
    import yaml

    base = report.get("base_model")
    n_before, n_after = report.get("num_layers_before"), report.get("num_layers_after")
    removed = [i for i in report.get("removed_layers") or [] if isinstance(i, int)]
    kept = [i for i in report.get("kept_layers") or [] if isinstance(i, int)]
    sub = report.get("removed_sublayers") or {}
    sub = {k: [i for i in v if isinstance(i, int)] for k, v in sub.items() if isinstance(v, list)} if isinstance(sub, dict) else {}
    p_before, p_after = _num(report.get("parameters_before")), _num(report.get("parameters_after"))
    scoring = report.get("scoring") or {}
    healing = report.get("healing") or {}
    evaluation = report.get("evaluation") or {}
    export = report.get("export") or {}
    recipe = report.get("recipe") or {}
    decilm = isinstance(export, dict) and str(export.get("format", "")).lower() == "decilm"

    metric = scoring.get("metric") or recipe.get("metric")
    entry = metric_entry(metric)
    metric_what = entry.description if entry is not None else None
    judged = scoring.get("judged_with") if isinstance(scoring.get("judged_with"), dict) else {}
    if judged.get("objective") == "kl_to_base" and getattr(entry, "description_kl", None):  # `auto` since issue 35
        metric_what = entry.description_kl
    chosen = scoring.get("chosen_metric")
    if metric == "auto" and isinstance(chosen, str) and entry is not None:  # name the metric whose selection won
        metric_what = f"{metric_what}; here the {chosen} selection won"
    heal_method = healing.get("method") if healing.get("method") not in (None, "none") else None
    healer = heal_info(heal_method)
    if isinstance(healing.get("stages"), list):  # a chain: show the trained stage's settings beside the totals
        healing = {**{k: v for st in healing["stages"] if isinstance(st, dict) for k, v in st.items()}, **healing}
    calibration = scoring.get("calibration") or {}

    ev = evaluation_view(evaluation) if evaluation else None
    ppl = perplexity_view(evaluation.get("perplexity") or {}) if evaluation else None
    speed = speed_view(evaluation.get("speed") or {}) if evaluation else None

    kv = export.get("kv_cache_bytes_per_token") if isinstance(export, dict) else None
    kv_view = None
    if isinstance(kv, dict) and (_num(kv.get("before")) is not None or _num(kv.get("after")) is not None):
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
    if recipe:
        clean = {k: v for k, v in recipe.items() if k not in ("output_dir", "overwrite") and v not in (None, [], {})}
        recipe_yaml = codeblock(yaml.safe_dump(clean, sort_keys=False, allow_unicode=True), "yaml")

    info = license_info or {}
    license_text = None
    if info.get("license"):
        name = info.get("license_name") if info.get("license") == "other" and info.get("license_name") else info.get("license")
        link = info.get("_resolved_link")
        license_text = Markup(f"[{code(name)}]({escape(link)})") if link and re.match(r"^[\w./:%#?=&~+-]+$", link) else code(name)

    limit = (evaluation.get("settings") or {}).get("limit") if evaluation else None
    param_change = None
    if p_before and p_after is not None:
        param_change = Markup(f"{100 * (p_after - p_before) / p_before:+.1f}%".replace("-", "−"))
    ctx: dict[str, Any] = {
        "title": md(model_name),
        "base_link": _base_link(report) if base else None,
        "base_revision": code(report["base_revision"]) if isinstance(report.get("base_revision"), str) else None,
        "granularity": report.get("granularity") or "block",
        "n_before": md(n_before) if isinstance(n_before, int) else None,
        "n_after": md(n_after) if isinstance(n_after, int) else None,
        "n_removed": md(len(removed)) if removed else None,
        "removed_list": code(json.dumps(removed)) if removed else None,
        "removed_ranges": fmt_layers(removed) if removed else None,
        "kept_list": code(json.dumps(kept)) if kept else None,
        "kept_ranges": fmt_layers(kept) if kept else None,
        "sublayers": [{"kind": md(k), "list": code(json.dumps(v)), "ranges": fmt_layers(v), "count": len(v)} for k, v in sub.items() if v],
        "p_before": fmt_count(p_before) if p_before else None,
        "p_after": fmt_count(p_after) if p_after else None,
        "p_change": param_change,
        "model_type": code(report["model_type"]) if report.get("model_type") else None,
        "dtype": code(report["dtype"]) if report.get("dtype") else None,
        "metric": code(metric) if metric else None,
        "metric_what": md(metric_what) if entry is not None else None,
        "metric_papers": paper_links(list(entry.citations)) if entry is not None else None,
        "selection": md(scoring.get("selection")) if scoring.get("selection") else None,
        "higher_is_more_important": scoring.get("higher_is_more_important"),
        "calibration": {
            "source": code(calibration.get("source")) if calibration.get("source") else None,
            "samples": md(calibration.get("samples")) if calibration.get("samples") is not None else None,
            "seq_len": md(calibration.get("seq_len")) if calibration.get("seq_len") is not None else None,
            "seed": md(calibration.get("seed")) if calibration.get("seed") is not None else None,
            "self": calibration.get("kind") == "self" or calibration.get("source") == "self",
        } if calibration else None,
        "scores_table": _scores_table(scoring, set(removed), sub),
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
        "eval_settings": _settings_view(evaluation.get("settings") or {}) if evaluation else None,
        "perplexity": ppl,
        "perplexity_skipped": md(evaluation.get("perplexity_skipped")) if evaluation.get("perplexity_skipped") else None,
        "generation": generation_view(evaluation.get("generation") or {}) if evaluation else None,
        "generation_skipped": md(evaluation.get("generation_skipped")) if evaluation.get("generation_skipped") else None,
        "speed": speed,
        "sweep": _sweep_view(report, output_dir),
        "rounds": [
            {"round": md(r.get("round", i + 1)), "removed": code(json.dumps(r.get("removed_layers") or [])),
             "healed": bool(r.get("healing"))}
            for i, r in enumerate(report.get("rounds") or []) if isinstance(r, dict)
        ] if isinstance(report.get("rounds"), list) and len(report["rounds"]) > 1 else [],
        "kv": kv_view,
        "decilm": decilm,
        "usage": codeblock(usage, "python") if not _gguf_only(report) else None,
        "gguf": _gguf_view(report, str(report.get("gguf_repo") or load_id)),
        "format_usage": _format_usage(report, str(load_id)),
        "command": codeblock(report["command"], "bash") if isinstance(report.get("command"), str) and report["command"] else None,
        "base_scores_from": md(evaluation.get("base_scores_from")) if evaluation.get("base_scores_from") else None,
        "eval_command": codeblock(evaluation["command"], "bash") if isinstance(evaluation.get("command"), str) and evaluation["command"] else None,
        "inputs": _inputs(report),
        "recipe_yaml": recipe_yaml,
        "world_size": md(report["world_size"]) if (_num(report.get("world_size")) or 0) > 1 else None,
        "versions": _versions(report),
        "citations": citations(report),
        "license": license_text,
        "license_source": md(info.get("source")) if info.get("license") and info.get("source") else None,
        "gated": bool(info.get("gated")),
        "limit": md(limit) if limit is not None else None,
        "images": {k: (Markup(escape(images[k])) if images.get(k) else None) for k in PLOT_FILES},
        "tool_version": md((report.get("tool") or {}).get("version")) if isinstance(report.get("tool"), dict) else None,
    }
    return ctx


def _absorb_runs(runs) -> Markup:
    """`absorb`'s record: which kept layers absorbed which removed layers."""
    parts = [f"{', '.join(map(str, r.get('layers') or []))} (for removed {', '.join(map(str, r.get('removed') or []))})"
             for r in runs if isinstance(r, dict)]
    return md("; ".join(parts))


def _format_usage(report: dict[str, Any], load_id: str) -> list[Markup]:
    """How to load the output formats with a usage block of their own (formats.OUTPUT_FORMATS; safetensors and
    GGUF have the card's built-in sections): one Markdown block each, for the formats whose record is in the
    report."""
    blocks = []
    for entry in OUTPUT_FORMATS.values():
        if entry.usage and entry.record and isinstance(report.get(entry.record), dict):
            text = entry.call("usage", report, load_id)
            if text:
                blocks.append(Markup(text))
    return blocks


def _gguf_view(report: dict[str, Any], load_id: str) -> dict[str, Any] | None:
    """The GGUF file of the output: how it was made and how to run it (llama.cpp, Ollama, transformers)."""
    info = report.get("gguf")
    if not isinstance(info, dict) or not isinstance(info.get("file"), str):
        return None
    name = info["file"]
    if info.get("route") == "export":
        how = f"exported as {info.get('type', '?')} with the `gguf` package's tensor names"
    else:
        requantized = info.get("requantized") or {}
        how = "cut from the source GGUF: the kept tensors' quantized blocks are copied byte for byte"
        if requantized:
            changes = sorted({f"{v.get('from')} → {v.get('to')}" for v in requantized.values() if isinstance(v, dict)})
            how += f"; {len(requantized)} tensors changed by healing were re-quantized ({', '.join(changes)})"
        if info.get("per_layer_keys"):
            how += "; per-layer metadata sliced: " + ", ".join(f"`{k}`" for k in info["per_layer_keys"])
    how = md(how)
    if report.get("gguf_of"):
        how += Markup("; the GGUF build of ") + model_link(report["gguf_of"])
    if report.get("gguf_repo"):  # published in a repo of its own (push --format both)
        how += Markup("; published in its own repo, ") + model_link(report["gguf_repo"])
    hub = "/" in load_id and not load_id.startswith(".")
    usage = f"llama-cli -m {name} -p \"The capital of France is\"\n"
    if hub:
        usage = f"llama-cli -hf {load_id} -p \"The capital of France is\"\nollama run hf.co/{load_id}\n"
    if info.get("architecture") != "deci":  # transformers' GGUF loader has no deci (sub-layer) architecture
        usage += ("python -c 'from transformers import AutoModelForCausalLM; "
                  f"AutoModelForCausalLM.from_pretrained({json.dumps(str(load_id))}, gguf_file={json.dumps(name)})'")
    else:
        how += Markup(" (llama.cpp's `deci` architecture: blocks without attention keep no KV cache)")
    return {"file": code(name), "how": how, "usage": codeblock(usage, "bash")}


def _scores_table(scoring: dict[str, Any], removed: set[int], sub: dict[str, list[int]]) -> list[dict[str, Markup]]:
    scores = scoring.get("scores") or {}
    values, unit = None, None
    if isinstance(scores.get("per_layer"), list):
        values = scores["per_layer"]
    elif isinstance(scores.get("per_unit"), list):
        values, unit = scores["per_unit"], scores.get("unit")
    if not values:
        return []
    gone = set(sub.get(unit) or []) if unit else removed
    return [
        {"layer": Markup(str(i)), "score": fmt_float(v, 4), "removed": Markup("removed" if i in gone else "")}
        for i, v in enumerate(values)
    ]


def _sweep_view(report: dict[str, Any], output_dir: Path | None) -> dict[str, Any] | None:
    """The depth sweep this model belongs to (``report["sweep"]``, written by sweep.py): plot and one row per variant."""
    sweep = report.get("sweep")
    if not isinstance(sweep, dict) or not isinstance(sweep.get("points"), list) or not sweep["points"]:
        return None
    plot = sweep.get("plot")
    if not (isinstance(plot, str) and re.fullmatch(r"[\w.-]+\.png", plot) and (output_dir is None or (output_dir / plot).is_file())):
        plot = None
    current = output_dir.name if output_dir is not None else None
    rows = []
    for p in sorted((p for p in sweep["points"] if isinstance(p, dict)), key=lambda p: -(_num(p.get("parameters")) or 0)):
        this = p.get("output") == current or (p.get("removed_layers") == report.get("removed_layers"))
        rows.append({
            "name": Markup("**this model**") if this else md(p.get("output")),
            "layers": md(p.get("num_layers_after")),
            "removed": fmt_layers(p.get("removed_layers")),
            "parameters": fmt_count(p.get("parameters")),
            "accuracy": fmt_metric("acc", p.get("mean_accuracy")),
            "perplexity": fmt_float(p.get("perplexity")),
        })
    return {"plot": Markup(escape(plot)) if plot else None, "rows": rows,
            "has_accuracy": any(_num(p.get("mean_accuracy")) is not None for p in sweep["points"] if isinstance(p, dict)),
            "has_perplexity": any(_num(p.get("perplexity")) is not None for p in sweep["points"] if isinstance(p, dict))}


def _versions(report: dict[str, Any]) -> list[dict[str, Markup]]:
    versions = report.get("versions") or {}
    return [{"name": md(k), "version": md(v)} for k, v in versions.items()] if isinstance(versions, dict) else []


def _base_link(report: dict[str, Any]) -> Markup:
    """The base model: a Hub link, or a local file's name and the start of its sha256 (the full one is under
    Reproduce)."""
    record = (report.get("provenance") or {}).get("base_model") if isinstance(report.get("provenance"), dict) else None
    if isinstance(record, dict) and record.get("sha256") and not hub_id(report.get("base_model")):
        return code(record.get("name")) + Markup(" (a local file, sha256 ") + code(str(record["sha256"])[:12] + "…") + Markup(")")
    return model_link(report.get("base_model"))


def _inputs(report: dict[str, Any]) -> list[dict[str, Markup]]:
    """Base model and local input files with their hashes (``provenance``)."""
    record = report.get("provenance") if isinstance(report.get("provenance"), dict) else {}
    out = []
    base = record.get("base_model")
    if isinstance(base, dict):
        sha = code(base["sha256"]) if base.get("sha256") else None
        files = base.get("files") if isinstance(base.get("files"), dict) else {}
        if files:  # a local directory: each weight/config file's hash
            sha = Markup("; ").join(code(name) + Markup(" ") + (code(h) if isinstance(h, str) else md(f"{h.get('bytes')} bytes"))
                                    for name, h in files.items())
        out.append({"role": Markup("base model"), "name": code(base.get("hub_id") or base.get("name")), "sha": sha,
                    "commit": code(base["commit"]) if base.get("commit") else None})
    for f in record.get("files") or []:
        if isinstance(f, dict) and f.get("name"):
            out.append({"role": md(f.get("role") or "file"), "name": code(f["name"]),
                        "sha": code(f["sha256"]) if f.get("sha256") else None, "commit": None})
    return out


def _before_after(healing: dict, stem: str) -> Markup | None:
    """"a → b" from the record's `<stem>_before` / `<stem>_after` (held-out loss, KL, ...); None when neither is there."""
    before, after = healing.get(f"{stem}_before"), healing.get(f"{stem}_after")
    if _num(before) is None and _num(after) is None:
        return None
    return Markup(f"{fmt_float(before, 4)} → {fmt_float(after, 4)}")


def _published_repo(report: dict[str, Any]) -> str | None:
    """The repo id recorded by the publish stage (``report["hub"]["repo_id"]``), when it is a valid id."""
    hub = report.get("hub")
    return hub_id(hub.get("repo_id")) if isinstance(hub, dict) else None
