"""The card's YAML metadata (huggingface_hub ``ModelCardData``): base model and relation, license, datasets,
tags (from the registries) and the ``model-index`` of the pruned model's results (``EvalResult``)."""

from __future__ import annotations

import dataclasses

from typing import Any

from hf_layerprune.card.citations import heal_info, method_names, metric_entry
from hf_layerprune.card.formatting import _num, hub_id, slug
from hf_layerprune.runtime.formats import OUTPUT_FORMATS
from hf_layerprune.report import (
    BaseCard, CalibrationRecord, EvaluationSection, HealingSection, PerplexityRecord, RecipeSection, Report,
)

TASK_DATASETS: dict[str, tuple[str, str, str | None, str]] = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "ARC-Challenge", "test"),
    "hellaswag": ("Rowan/hellaswag", "HellaSwag", None, "validation"),
    "piqa": ("baber/piqa", "PIQA", None, "validation"),
    "winogrande": ("allenai/winogrande", "WinoGrande", "winogrande_xl", "validation"),
    "boolq": ("aps/super_glue", "BoolQ", "boolq", "validation"),
    "openbookqa": ("allenai/openbookqa", "OpenBookQA", "main", "test"),
    "mmlu": ("cais/mmlu", "MMLU", "all", "test"),
    "wikitext": ("EleutherAI/wikitext_document_level", "WikiText-2 (documents)", "wikitext-2-raw-v1", "test"),
}


def _datasets(report: Report) -> list[str]:
    """Hub ids of the calibration and healing datasets (local files and self-generated text are left out)."""
    out: list[str] = []
    calibration = (report.scoring.calibration if report.scoring else None) or CalibrationRecord()
    healing = report.healing or HealingSection()
    recipe = report.recipe or RecipeSection()
    candidates = []
    if calibration.kind in (None, "hub"):
        candidates.append(calibration.source or (recipe.calibration if not calibration else None))
    heal_data = healing.data
    if isinstance(heal_data, dict):
        heal_data = heal_data.get("source") if heal_data.get("kind") in (None, "hub") else None
    if healing or recipe.heal not in (None, "none"):
        candidates.append(heal_data or recipe.heal_data)
    for cand in candidates:
        if not isinstance(cand, str) or cand in ("self", ""):
            continue
        for part in cand.split(","):
            rid = hub_id(part.strip().split(":")[0])
            if rid and rid not in out:
                out.append(rid)
    return out


def _tags(report: Report) -> list[str]:
    tags = ["layer-pruning", "pruned", "hf-layerprune"]
    metric = method_names(report)[0]
    if metric:
        entry = metric_entry(metric)
        tags += list(entry.tags) if entry is not None else [slug(metric)]
    method = report.healing.method if report.healing else None
    if method and method != "none":
        info = heal_info(method)
        tags += info[1] if info else [slug(method)]
    if report.granularity in ("attention", "mlp"):
        tags.append(f"{report.granularity}-pruning")
    if report.granularity == "mixed":
        tags += ["layer-pruning", "attention-pruning"]
    model_type = report.source.model_type
    if model_type:
        tags.append(slug(model_type))
    for entry in OUTPUT_FORMATS.values():  # the formats written (gguf, ...): their record is in the report
        if format_record(report, entry) is not None:
            tags += entry.tags
    return [t for i, t in enumerate(tags) if t and t not in tags[:i]]


def _task_base(task: str) -> str:
    return task[len("local_"):] if task.startswith("local_") else task


def _eval_results(report: Report) -> list:
    from huggingface_hub import EvalResult

    evaluation = report.evaluation or EvaluationSection()
    out = []
    for task, metrics in (evaluation.pruned or {}).items():
        dataset = TASK_DATASETS.get(_task_base(task))
        for metric, rec in metrics.items():
            if rec.parent or _num(rec.value) is None:
                continue
            args: dict[str, Any] = {"num_few_shot": rec.n_shot if rec.n_shot is not None else 0}
            if rec.limit is not None:
                args["limit"] = rec.limit
            out.append(EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type=dataset[0] if dataset else slug(task) or "unknown",
                dataset_name=dataset[1] if dataset else str(task),
                dataset_config=dataset[2] if dataset else None,
                dataset_split=dataset[3] if dataset else None,
                dataset_args=args,
                metric_type=str(metric).split(",")[0],
                metric_name=str(metric),
                metric_value=round(float(rec.value), 4),
            ))
    ppl = (evaluation.perplexity.pruned if evaluation.perplexity else None) or PerplexityRecord()
    source = ppl.source or ""
    if _num(ppl.perplexity) is not None and (source.startswith("wikitext:wikitext-2-raw") or source.endswith("wiki.test.raw")):
        out.append(EvalResult(
            task_type="text-generation",
            task_name="Text Generation",
            dataset_type="wikitext",
            dataset_name="WikiText-2 (raw)",
            dataset_config="wikitext-2-raw-v1",
            dataset_split="test",
            metric_type="perplexity",
            metric_name=f"perplexity ({ppl.seq_len}-token windows)",
            metric_value=round(float(ppl.perplexity), 4),
            metric_args={"seq_len": ppl.seq_len, "stride": ppl.stride},
        ))
    return out


def card_data(report: Report, *, model_name: str, license_link: str | None = None):
    """The YAML metadata as huggingface_hub ``ModelCardData``; the license from the report's ``base_card``
    (``license_link``: its link resolved against the output folder or the base repo, render._license_link)."""
    from huggingface_hub import ModelCardData

    info = report.base_card or BaseCard()
    base = hub_id(report.source.base_model)
    kwargs: dict[str, Any] = {}
    if hub_id(report.gguf_of):  # the GGUF's own repo (push --format both): a quantized edge from the pruned repo
        kwargs["base_model"] = report.gguf_of
        kwargs["base_model_relation"] = "quantized"
    elif base:
        kwargs["base_model"] = base
        kwargs["base_model_relation"] = "finetune"
    for key in ("license", "license_name"):
        value = getattr(info, key)
        if value is not None and value.strip():
            kwargs[key] = " ".join(value.split())
    if license_link:
        kwargs["license_link"] = license_link
    language = info.language
    if isinstance(language, (str, list)) and language:
        kwargs["language"] = language
    datasets = _datasets(report)
    if datasets:
        kwargs["datasets"] = datasets
    results = _eval_results(report)
    if results:
        kwargs["eval_results"] = results
        kwargs["model_name"] = " ".join(str(model_name).split()) or "pruned-model"
    library = "gguf" if _gguf_only(report) else "transformers"
    return ModelCardData(library_name=library, pipeline_tag="text-generation", tags=_tags(report), **kwargs)


def _gguf_only(report: Report) -> bool:
    return report.gguf is not None and ((report.recipe.format if report.recipe else None) == "gguf"
                                        or bool(report.gguf_of))


def format_record(report: Report, entry) -> Any:
    """The report's record of an output format (formats.OUTPUT_FORMATS): its typed section (`gguf`), or for a format
    the Report does not model the key of `report.other`; None when the run did not write it."""
    if not entry.record:
        return None
    if entry.record in {f.name for f in dataclasses.fields(Report)}:
        return getattr(report, entry.record)
    return report.other.get(entry.record)
