"""The model card: rendered from ``layerprune.json`` alone (no model needed), with plots beside it.

- Metadata (the YAML header) is built with huggingface_hub's ``ModelCardData`` and written by its ``to_yaml()``:
  base_model, base_model_relation, the license inherited from the base model's card, library_name,
  pipeline_tag, tags, datasets and a ``model-index`` of the pruned model's results (``EvalResult``).
- The body comes from ``templates/model_card.md.j2`` rendered in a Jinja2 ``SandboxedEnvironment`` with
  autoescaping on. Every string that comes from the report (model names, dataset ids, free text) goes through
  ``md()`` (HTML- and Markdown-escaped, one line) or ``code()`` (a code span that cannot be closed early) before
  it reaches the page; numbers go through the formatting helpers. The template never receives raw user text.

**base_model_relation.** The Hub accepts ``adapter``, ``merge``, ``quantized`` and ``finetune`` (and infers one when
the key is absent). A pruned model is none of the first three, so every card says ``finetune``: for a healed model
the weights changed; for an unhealed cut the architecture changed (the weights are a subset of the base's), and
``finetune`` is also what the Hub would infer. The body states exactly what was done.

**License.** Never assumed. It is copied (``license``, ``license_name``, ``license_link``) from the base model's
card: the README.md of a local base directory, the Hub cache, or the Hub API (``model_info(expand=cardData)``),
or a card file given with ``base_card=``. The result is remembered in the report's ``base_card`` section so that
later re-renders work offline. When no card can be read, the license is left out and the card says so.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from markupsafe import Markup, escape

from hf_layerprune.errors import LayerPruneError
from hf_layerprune.report import read_report, write_report

CARD_FILENAME = "README.md"
TEMPLATE_NAME = "model_card.md.j2"
PLOT_FILES = {
    "scores": "layerprune_scores.png",
    "healing": "layerprune_healing_loss.png",
    "evaluation": "layerprune_evaluation.png",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
HUB = "https://huggingface.co"

# ------------------------------------------------------------------------------------------------ papers
CITATIONS: dict[str, dict[str, str]] = {
    "gromov2024": {
        "label": "Gromov et al., 2024",
        "url": "https://arxiv.org/abs/2403.17887",
        "bibtex": """@article{gromov2024unreasonable,
  title   = {The Unreasonable Ineffectiveness of the Deeper Layers},
  author  = {Gromov, Andrey and Tirumala, Kushal and Shapourian, Hassan and Glorioso, Paolo and Roberts, Daniel A.},
  journal = {arXiv preprint arXiv:2403.17887},
  year    = {2024}
}""",
    },
    "shortgpt": {
        "label": "ShortGPT, Men et al., 2024",
        "url": "https://arxiv.org/abs/2403.03853",
        "bibtex": """@article{men2024shortgpt,
  title   = {{ShortGPT}: Layers in Large Language Models are More Redundant Than You Expect},
  author  = {Men, Xin and Xu, Mingyu and Zhang, Qingyu and Wang, Bingning and Lin, Hongyu and Lu, Yaojie and Han, Xianpei and Chen, Weipeng},
  journal = {arXiv preprint arXiv:2403.03853},
  year    = {2024}
}""",
    },
    "streamline": {
        "label": "LLM-Streamline, Chen et al., 2024",
        "url": "https://arxiv.org/abs/2403.19135",
        "bibtex": """@article{chen2024streamlining,
  title   = {Streamlining Redundant Layers to Compress Large Language Models},
  author  = {Chen, Xiaodong and Hu, Yuxuan and Zhang, Jing and Wang, Yanling and Li, Cuiping and Chen, Hong},
  journal = {arXiv preprint arXiv:2403.19135},
  year    = {2024}
}""",
    },
    "siddiqui2024": {
        "label": "Siddiqui et al., 2024",
        "url": "https://arxiv.org/abs/2407.16286",
        "bibtex": """@article{siddiqui2024deeper,
  title   = {A deeper look at depth pruning of {LLMs}},
  author  = {Siddiqui, Shoaib Ahmed and Dong, Xin and Heinrich, Greg and Breuel, Thomas and Kautz, Jan and Krueger, David and Molchanov, Pavlo},
  journal = {arXiv preprint arXiv:2407.16286},
  year    = {2024}
}""",
    },
    "gradmap": {
        "label": "GradMAP, Liu et al., 2026",
        "url": "https://arxiv.org/abs/2602.14649",
        "bibtex": """@article{liu2026gradmap,
  title   = {{GradMAP}: Faster Layer Pruning with Gradient Metric and Projection Compensation},
  author  = {Liu, Hao and Li, Guangyan and Zhang, Wensheng and Tang, Yongqiang},
  journal = {arXiv preprint arXiv:2602.14649},
  year    = {2026}
}""",
    },
    "sleb": {
        "label": "SLEB, Song et al., 2024",
        "url": "https://arxiv.org/abs/2402.09025",
        "bibtex": """@article{song2024sleb,
  title   = {{SLEB}: Streamlining {LLMs} through Redundancy Verification and Elimination of Transformer Blocks},
  author  = {Song, Jiwon and Oh, Kyungseok and Kim, Taesu and Kim, Hyungjun and Kim, Yulhwa and Kim, Jae-Joon},
  journal = {arXiv preprint arXiv:2402.09025},
  year    = {2024}
}""",
    },
    "shortened_llama": {
        "label": "Shortened LLaMA, Kim et al., 2024",
        "url": "https://arxiv.org/abs/2402.02834",
        "bibtex": """@article{kim2024shortened,
  title   = {Shortened {LLaMA}: Depth Pruning for Large Language Models with Comparison of Retraining Methods},
  author  = {Kim, Bo-Kyeong and Kim, Geonmin and Kim, Tae-Ho and Castells, Thibault and Choi, Shinkook and Shin, Junho and Song, Hyoung-Kyu},
  journal = {arXiv preprint arXiv:2402.02834},
  year    = {2024}
}""",
    },
    "replaceme": {
        "label": "ReplaceMe, Shopkhoev et al., 2025",
        "url": "https://arxiv.org/abs/2505.02819",
        "bibtex": """@article{shopkhoev2025replaceme,
  title   = {{ReplaceMe}: Network Simplification via Depth Pruning and Transformer Block Linearization},
  author  = {Shopkhoev, Dmitriy and Ali, Ammar and Zhussip, Magauiya and Malykh, Valentin and Lefkimmiatis, Stamatios and Komodakis, Nikos and Zagoruyko, Sergey},
  journal = {arXiv preprint arXiv:2505.02819},
  year    = {2025}
}""",
    },
    "lu2024": {
        "label": "Lu et al., 2024",
        "url": "https://arxiv.org/abs/2411.15558",
        "bibtex": """@article{lu2024reassessing,
  title   = {Reassessing Layer Pruning in {LLMs}: New Insights and Methods},
  author  = {Lu, Yao and Cheng, Hao and Fang, Yujie and Wang, Zeyu and Wei, Jiaheng and Xu, Dongwei and Xuan, Qi and Yang, Xiaoniu and Zhu, Zhaowei},
  journal = {arXiv preprint arXiv:2411.15558},
  year    = {2024}
}""",
    },
    "lora": {
        "label": "LoRA, Hu et al., 2021",
        "url": "https://arxiv.org/abs/2106.09685",
        "bibtex": """@article{hu2021lora,
  title   = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author  = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang, Shean and Wang, Lu and Chen, Weizhu},
  journal = {arXiv preprint arXiv:2106.09685},
  year    = {2021}
}""",
    },
    "qlora": {
        "label": "QLoRA, Dettmers et al., 2023",
        "url": "https://arxiv.org/abs/2305.14314",
        "bibtex": """@article{dettmers2023qlora,
  title   = {{QLoRA}: Efficient Finetuning of Quantized {LLMs}},
  author  = {Dettmers, Tim and Pagnoni, Artidoro and Holtzman, Ari and Zettlemoyer, Luke},
  journal = {arXiv preprint arXiv:2305.14314},
  year    = {2023}
}""",
    },
}

# metric name -> (what it measures, tag, papers)
METRICS: dict[str, tuple[str, str, list[str]]] = {
    "angular": ("angular distance between a block's input and output on the last token", "angular-distance", ["gromov2024"]),
    "bi": ("Block Influence, 1 − cosine(input, output) over all tokens", "block-influence", ["shortgpt"]),
    "cosine": ("cosine similarity between a block's input and output", "llm-streamline", ["streamline"]),
    "shapley": ("loss increase when the layer is left out (leave-one-out Shapley)", "shapley", ["siddiqui2024"]),
    "ppl": ("calibration perplexity with the layer removed", "sleb", ["sleb"]),
    "gradient": ("gradient-magnitude importance", "gradmap", ["gradmap"]),
    "taylor": ("first-order Taylor importance |W·∇W|", "taylor-importance", ["shortened_llama"]),
    "last": ("the deepest layers before the final one (a rule, no calibration)", "last-layers", ["gromov2024"]),
    "reverse": ("the final layers (a rule, no calibration)", "reverse-order", ["lu2024"]),
    "random": ("a seeded random choice (a baseline)", "random-baseline", []),
    "auto": ("the best of the angular, cosine and bi selections, judged by held-out calibration loss after healing",
             "auto-selection", ["gromov2024", "streamline", "shortgpt"]),
}
# healer name -> (what it does, tag, papers)
HEALERS: dict[str, tuple[str, str, list[str]]] = {
    "lora": ("LoRA on the MLP trained with the LM loss, merged into the weights", "lora", ["lora"]),
    "qlora": ("LoRA trained on a 4-bit NF4 copy, merged into the 16-bit weights", "qlora", ["qlora", "lora"]),
    "distill": ("LoRA trained to match the unpruned model's next-token distribution (KL), merged", "distillation", ["lora"]),
    "replace": ("the removed block replaced by one layer trained on the block's input and output", "layer-replacement", ["streamline"]),
    "absorb": ("the kept layers before each removed block trained to do the block's work too (LLM-Streamline's "
               "layer replacement at the requested depth)", "layer-absorption", ["streamline"]),
    "bias": ("the removed block's mean update added back as a bias", "bias-compensation", ["siddiqui2024"]),
    "linear": ("a least-squares linear transform fused into a down-projection", "linear-compensation", ["replaceme"]),
    "projection": ("a projection compensation of the most-drifted layer folded into its down-projection", "projection-compensation", ["gradmap"]),
}
# lm-eval task -> (Hub dataset id, pretty name, config, split) for the model-index
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
PERCENT_METRICS = ("acc", "acc_norm", "exact_match", "em", "f1", "mc1", "mc2", "accuracy")


def _absorb_runs(runs) -> Markup:
    """`absorb`'s record: which kept layers absorbed which removed layers."""
    parts = [f"{', '.join(map(str, r.get('layers') or []))} (for removed {', '.join(map(str, r.get('removed') or []))})"
             for r in runs if isinstance(r, dict)]
    return md("; ".join(parts))


# ------------------------------------------------------------------------------------------------ escaping
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


def hub_id(value: Any) -> str | None:
    """``value`` when it is a plausible Hub repo id (``name`` or ``org/name``) and not a local path, else None."""
    if not isinstance(value, str) or not HUB_ID.match(value) or ".." in value or value.endswith((".gguf", ".safetensors")):
        return None
    if os.path.exists(value):
        return None
    return value


def model_link(value: Any) -> Markup:
    """[`org/name`](https://huggingface.co/org/name) for Hub ids, a code span otherwise."""
    rid = hub_id(value)
    if rid:
        return Markup(f"[{code(rid)}]({HUB}/{rid})")
    text = str(value)
    if text.startswith(("/", "~", "./", "../")) or "\\" in text:  # a local path: its name, not the author's disk layout
        return code(text.replace("\\", "/").rstrip("/").rpartition("/")[2]) + Markup(" (a local checkpoint)")
    return code(value)


# ------------------------------------------------------------------------------------------------ numbers
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


# ------------------------------------------------------------------------------------------------ license
def _card_fields(data: Any) -> dict[str, Any]:
    """License and friends from a ModelCardData or a cardData dict."""
    if data is None:
        return {}
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    out = {}
    for key in ("license", "license_name", "license_link", "language"):
        value = get(key, None)
        if value:
            out[key] = value
    gated = get("extra_gated_prompt", None) or get("extra_gated_fields", None) or get("gated", None)
    if gated:
        out["gated"] = True
    return out


def license_from_card_file(path: str | os.PathLike) -> dict[str, Any]:
    """License fields of a README.md (model card) file."""
    from huggingface_hub import ModelCard

    path = Path(path)
    if not path.is_file():
        raise LayerPruneError(f"base model card not found: {path}")
    card = ModelCard.load(path, ignore_metadata_errors=True)
    info = _card_fields(card.data)
    info["source"] = f"card file {path.name}"
    return info


def find_base_card(report: dict[str, Any], *, online: bool | None = None) -> dict[str, Any] | None:
    """License fields of the base model's card: local README.md, Hub cache, then the Hub API. None if unreadable."""
    base = report.get("base_model")
    revision = report.get("base_revision")
    if not isinstance(base, str) or not base:
        return None
    path = Path(base).expanduser()
    folder = path.parent if path.is_file() else path
    if folder.is_dir() and (folder / CARD_FILENAME).is_file():
        info = license_from_card_file(folder / CARD_FILENAME)
        info["source"] = "the base model's README.md"
        return info
    rid = hub_id(base)
    if rid is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(rid, CARD_FILENAME, revision=revision)
    except Exception:  # noqa: BLE001 - a broken cache is not fatal
        cached = None
    if isinstance(cached, str) and os.path.isfile(cached):
        info = license_from_card_file(cached)
        info["source"] = f"{HUB}/{rid} (cached card)"
        return info
    import huggingface_hub.constants as constants

    if online is False or (online is None and constants.HF_HUB_OFFLINE):
        return None
    try:
        from huggingface_hub import HfApi

        info_obj = HfApi().model_info(rid, revision=revision, expand=["cardData", "gated"])
    except Exception:  # noqa: BLE001 - offline, private, gated or missing: the card says "unknown"
        return None
    info = _card_fields(getattr(info_obj, "card_data", None))
    if getattr(info_obj, "gated", None):
        info["gated"] = True
    info["source"] = f"{HUB}/{rid}"
    return info


def _license_link(info: dict[str, Any], base: Any, revision: Any, output_dir: Path | None) -> str | None:
    link = info.get("license_link")
    if not isinstance(link, str) or not link:
        return None
    if re.match(r"^https?://", link):
        return link
    if output_dir is not None and (output_dir / link).is_file():
        return link  # the license file was copied beside the weights
    rid = hub_id(base)
    if rid and re.fullmatch(r"[\w./-]+", link) and ".." not in link:
        return f"{HUB}/{rid}/blob/{revision if isinstance(revision, str) and revision else 'main'}/{link.lstrip('./')}"
    return None


# ------------------------------------------------------------------------------------------------ card data
def _datasets(report: dict[str, Any]) -> list[str]:
    """Hub ids of the calibration and healing datasets (local files and self-generated text are left out)."""
    out: list[str] = []
    scoring = report.get("scoring") or {}
    calibration = scoring.get("calibration") or {}
    healing = report.get("healing") or {}
    recipe = report.get("recipe") or {}
    candidates = []
    if calibration.get("kind") in (None, "hub"):
        candidates.append(calibration.get("source") or (recipe.get("calibration") if not calibration else None))
    heal_data = healing.get("data")
    if isinstance(heal_data, dict):
        heal_data = heal_data.get("source") if heal_data.get("kind") in (None, "hub") else None
    if healing or recipe.get("heal") not in (None, "none"):
        candidates.append(heal_data or recipe.get("heal_data"))
    for cand in candidates:
        if not isinstance(cand, str) or cand in ("self", ""):
            continue
        for part in cand.split(","):
            rid = hub_id(part.strip().split(":")[0])
            if rid and rid not in out:
                out.append(rid)
    return out


def _heal_info(method: Any) -> tuple[str, list[str], list[str]] | None:
    """(what it does, tags, citation keys) of a healer or of a chain `linear+distill` (run in that order)."""
    parts = [HEALERS[m] for m in str(method).split("+") if m in HEALERS] if isinstance(method, str) else []
    if not parts:
        return None
    return "; then ".join(p[0] for p in parts), [p[1] for p in parts], [key for p in parts for key in p[2]]


def _tags(report: dict[str, Any]) -> list[str]:
    tags = ["layer-pruning", "pruned", "hf-layerprune"]
    scoring = report.get("scoring") or {}
    metric = scoring.get("metric") or (report.get("recipe") or {}).get("metric")
    if metric:
        tags.append(METRICS[metric][1] if metric in METRICS else slug(metric))
    method = (report.get("healing") or {}).get("method")
    if method and method != "none":
        info = _heal_info(method)
        tags += info[1] if info else [slug(method)]
    if report.get("granularity") in ("attention", "mlp"):
        tags.append(f"{report['granularity']}-pruning")
    model_type = report.get("model_type")
    if isinstance(model_type, str) and model_type:
        tags.append(slug(model_type))
    if isinstance(report.get("gguf"), dict):
        tags.append("gguf")
    return [t for i, t in enumerate(tags) if t and t not in tags[:i]]


def _task_base(task: str) -> str:
    return task[len("local_"):] if task.startswith("local_") else task


def _eval_results(report: dict[str, Any]) -> list:
    from huggingface_hub import EvalResult

    evaluation = report.get("evaluation") or {}
    out = []
    for task, metrics in (evaluation.get("pruned") or {}).items():
        if not isinstance(metrics, dict):
            continue
        dataset = TASK_DATASETS.get(_task_base(task))
        for metric, rec in metrics.items():
            if not isinstance(rec, dict) or rec.get("parent") or _num(rec.get("value")) is None:
                continue
            args: dict[str, Any] = {"num_few_shot": rec.get("n_shot") if isinstance(rec.get("n_shot"), int) else 0}
            if rec.get("limit") is not None:
                args["limit"] = rec["limit"]
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
                metric_value=round(float(rec["value"]), 4),
            ))
    ppl = ((evaluation.get("perplexity") or {}).get("pruned")) or {}
    source = str(ppl.get("source") or "")
    if _num(ppl.get("perplexity")) is not None and (source.startswith("wikitext:wikitext-2-raw") or source.endswith("wiki.test.raw")):
        out.append(EvalResult(
            task_type="text-generation",
            task_name="Text Generation",
            dataset_type="wikitext",
            dataset_name="WikiText-2 (raw)",
            dataset_config="wikitext-2-raw-v1",
            dataset_split="test",
            metric_type="perplexity",
            metric_name=f"perplexity ({ppl.get('seq_len')}-token windows)",
            metric_value=round(float(ppl["perplexity"]), 4),
            metric_args={"seq_len": ppl.get("seq_len"), "stride": ppl.get("stride")},
        ))
    return out


def card_data(report: dict[str, Any], *, model_name: str, license_info: dict[str, Any] | None = None):
    """The YAML metadata as huggingface_hub ``ModelCardData``."""
    from huggingface_hub import ModelCardData

    info = license_info or {}
    base = hub_id(report.get("base_model"))
    kwargs: dict[str, Any] = {}
    if base:
        kwargs["base_model"] = base
        kwargs["base_model_relation"] = "finetune"
    for key in ("license", "license_name"):
        if isinstance(info.get(key), str) and info[key].strip():
            kwargs[key] = " ".join(info[key].split())
    link = info.get("_resolved_link")
    if link:
        kwargs["license_link"] = link
    language = info.get("language")
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


def _gguf_only(report: dict[str, Any]) -> bool:
    return isinstance(report.get("gguf"), dict) and (report.get("recipe") or {}).get("format") == "gguf"


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
    hub = "/" in load_id and not load_id.startswith(".")
    usage = f"llama-cli -m {name} -p \"The capital of France is\"\n"
    if hub:
        usage = f"llama-cli -hf {load_id} -p \"The capital of France is\"\nollama run hf.co/{load_id}\n"
    usage += ("python -c 'from transformers import AutoModelForCausalLM; "
              f"AutoModelForCausalLM.from_pretrained({json.dumps(str(load_id))}, gguf_file={json.dumps(name)})'")
    return {"file": code(name), "how": md(how), "usage": codeblock(usage, "bash")}


# ------------------------------------------------------------------------------------------------ view model
def _ordered_tasks(evaluation: dict[str, Any]) -> list[str]:
    pruned = evaluation.get("pruned") or {}
    base = evaluation.get("base") or {}
    requested = list((evaluation.get("settings") or {}).get("tasks") or [])
    names = [t for t in requested if t in pruned or t in base]
    for t in list(pruned) + list(base):
        metrics = pruned.get(t) or base.get(t) or {}
        top = isinstance(metrics, dict) and not any(isinstance(r, dict) and r.get("parent") for r in metrics.values())
        if top and t not in names:
            names.append(t)
    return names


DISPLAY_METRIC_ORDER = ("acc", "acc_norm", "exact_match", "f1")


def _metric_order(metrics: Iterable[str]) -> list[str]:
    names = list(metrics)
    return sorted(names, key=lambda m: (DISPLAY_METRIC_ORDER.index(m) if m in DISPLAY_METRIC_ORDER else 99, m))


def _main_metric(metrics: dict[str, Any]) -> str | None:
    from hf_layerprune.evaluation import main_metric

    return main_metric(metrics) or next(iter(metrics), None)


def _retention(base: Any, pruned: Any, higher: Any) -> float | None:
    b, p = _num(base), _num(pruned)
    if b is None or p is None:
        return None
    if higher is False:
        return 100.0 * b / p if p else None
    return 100.0 * p / b if b else None


def _settings_view(settings: dict[str, Any]) -> dict[str, Any]:
    limit = settings.get("limit")
    return {
        "harness": md(f"lm-eval {settings.get('lm_eval_version')}" if settings.get("lm_eval_version") else "lm-eval"),
        "num_fewshot": md(settings.get("num_fewshot")) if settings.get("num_fewshot") is not None else None,
        "limit": md(limit) if limit is not None else None,
        "batch_size": md(settings.get("batch_size")),
        "device": md(settings.get("device") or "–"),
        "dtype": md(settings.get("dtype") or "–"),
        "local": any(str(t).startswith("local_") for t in settings.get("tasks") or []),
    }


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


def _citations(report: dict[str, Any]) -> list[dict[str, Any]]:
    keys: list[str] = []
    scoring = report.get("scoring") or {}
    metric = scoring.get("metric") or (report.get("recipe") or {}).get("metric")
    if metric in METRICS:
        keys += METRICS[metric][2]
        if metric == "ppl" and scoring.get("selection") == "topk":
            keys.append("shortened_llama")
    method = (report.get("healing") or {}).get("method")
    info = _heal_info(method)
    if info:
        keys += info[2]
        if "qlora" in str(method).split("+") and "gromov2024" not in keys:
            keys.append("gromov2024")  # its healing recipe
    seen = []
    for k in keys:
        if k in CITATIONS and k not in seen:
            seen.append(k)
    return [{"key": k, "label": CITATIONS[k]["label"], "url": CITATIONS[k]["url"], "bibtex": codeblock(CITATIONS[k]["bibtex"], "bibtex")} for k in seen]


def _paper_links(keys: list[str]) -> Markup:
    links = [Markup(f"[{escape(CITATIONS[k]['label'])}]({CITATIONS[k]['url']})") for k in keys if k in CITATIONS]
    return Markup("; ").join(links)


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
    metric_info = METRICS.get(metric) if isinstance(metric, str) else None
    chosen = scoring.get("chosen_metric")
    if metric == "auto" and isinstance(chosen, str) and metric_info:  # name the metric whose selection won
        metric_info = (f"{metric_info[0]}; here the {chosen} selection won", *metric_info[1:])
    heal_method = healing.get("method") if healing.get("method") not in (None, "none") else None
    heal_info = _heal_info(heal_method)
    if isinstance(healing.get("stages"), list):  # a chain: show the trained stage's settings beside the totals
        healing = {**{k: v for st in healing["stages"] if isinstance(st, dict) for k, v in st.items()}, **healing}
    calibration = scoring.get("calibration") or {}

    from hf_layerprune.card_evaluation import evaluation_view, perplexity_view, speed_view

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
        "metric_what": md(metric_info[0]) if metric_info else None,
        "metric_papers": _paper_links(metric_info[2]) if metric_info else None,
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
            "what": md(heal_info[0]) if heal_info else None,
            "papers": _paper_links(heal_info[2]) if heal_info else None,
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
        "gguf": _gguf_view(report, str(load_id)),
        "command": codeblock(report["command"], "bash") if isinstance(report.get("command"), str) and report["command"] else None,
        "base_scores_from": md(evaluation.get("base_scores_from")) if evaluation.get("base_scores_from") else None,
        "eval_command": codeblock(evaluation["command"], "bash") if isinstance(evaluation.get("command"), str) and evaluation["command"] else None,
        "inputs": _inputs(report),
        "recipe_yaml": recipe_yaml,
        "world_size": md(report["world_size"]) if _num(report.get("world_size")) and report["world_size"] > 1 else None,
        "versions": _versions(report),
        "citations": _citations(report),
        "license": license_text,
        "license_source": md(info.get("source")) if info.get("license") and info.get("source") else None,
        "gated": bool(info.get("gated")),
        "limit": md(limit) if limit is not None else None,
        "images": {k: (Markup(escape(images[k])) if images.get(k) else None) for k in PLOT_FILES},
        "tool_version": md((report.get("tool") or {}).get("version")) if isinstance(report.get("tool"), dict) else None,
    }
    return ctx


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


# ------------------------------------------------------------------------------------------------ render
def _environment():
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md, code=code)
    return env


def make_plots(report: dict[str, Any], output_dir: Path) -> dict[str, str]:
    """Draw the plots the report has data for; returns {kind: file name relative to the card}."""
    from hf_layerprune import plots

    made: dict[str, str] = {}
    scoring = report.get("scoring") or {}
    if scoring.get("scores"):
        path = plots.plot_layer_scores(scoring, report.get("removed_layers") or [], output_dir / PLOT_FILES["scores"],
                                       removed_sublayers=report.get("removed_sublayers"))
        if path:
            made["scores"] = PLOT_FILES["scores"]
    losses = (report.get("healing") or {}).get("losses")
    if isinstance(losses, list) and len(losses) >= 2 and plots.plot_healing_loss(losses, output_dir / PLOT_FILES["healing"]):
        made["healing"] = PLOT_FILES["healing"]
    from hf_layerprune.card_evaluation import evaluation_view

    evaluation = report.get("evaluation") or {}
    view = evaluation_view(evaluation) if evaluation else None
    if view and view["bars"] and plots.plot_evaluation(view["bars"], output_dir / PLOT_FILES["evaluation"]):
        made["evaluation"] = PLOT_FILES["evaluation"]
    for kind, name in PLOT_FILES.items():  # a re-render without the data drops the old picture
        if kind not in made and (output_dir / name).exists():
            (output_dir / name).unlink()
    return made


def card_text(report: dict[str, Any], *, model_name: str, repo_id: str | None = None,
              license_info: dict[str, Any] | None = None, images: dict[str, str] | None = None,
              output_dir: Path | None = None) -> str:
    """The full README.md text (YAML header + body) for ``report`` (local paths reduced to names: provenance.py)."""
    from hf_layerprune.provenance import portable_report

    report = portable_report(report)
    info = dict(license_info or {})
    info["_resolved_link"] = _license_link(info, report.get("base_model"), report.get("base_revision"), output_dir)
    data = card_data(report, model_name=repo_id or model_name, license_info=info)
    context = build_context(report, model_name=repo_id or model_name, repo_id=repo_id, license_info=info,
                            images=images or {}, output_dir=output_dir)
    body = _environment().get_template(TEMPLATE_NAME).render(**context)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def render_card(
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_card: str | os.PathLike | None = None,
    plots: bool = True,
    online: bool | None = None,
) -> Path:
    """Write ``README.md`` (and the plots) in ``output_dir`` from its ``layerprune.json``; returns the card path.

    ``repo_id``: the Hub repo the model is (or will be) published to (title, usage snippet, model-index name).
    ``base_card``: a model card file to take the license from (instead of looking the base model up).
    ``online``: allow the Hub API lookup of the base card (None: unless HF_HUB_OFFLINE).
    """
    out = Path(output_dir)
    try:
        report = read_report(out)
    except FileNotFoundError:
        raise LayerPruneError(f"{out} has no layerprune.json; is it a hf-layerprune output directory?") from None
    except json.JSONDecodeError as exc:
        raise LayerPruneError(f"{out}/layerprune.json is not valid JSON: {exc}") from None
    if not isinstance(report, dict):
        raise LayerPruneError(f"{out}/layerprune.json must hold a JSON object")
    if repo_id is not None and not hub_id(repo_id):
        raise LayerPruneError(f"{repo_id!r} is not a valid Hub repo id (use owner/name)")
    recorded = report.get("base_card") if isinstance(report.get("base_card"), dict) else None
    if base_card is not None:
        info = license_from_card_file(base_card)
    elif recorded and recorded.get("license"):
        info = recorded
    else:
        info = find_base_card(report, online=online) or recorded
    if info and info.get("license") and info != recorded:
        report["base_card"] = {k: v for k, v in info.items() if not k.startswith("_")}
        write_report(out, report)
    images = make_plots(report, out) if plots else {}
    name = repo_id or _published_repo(report)
    model_name = name or _default_name(out, report)
    text = card_text(report, model_name=model_name, repo_id=name, license_info=info, images=images, output_dir=out)
    path = out / CARD_FILENAME
    tmp = path.with_name(f".{CARD_FILENAME}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _published_repo(report: dict[str, Any]) -> str | None:
    """The repo id recorded by the publish stage (``report["hub"]["repo_id"]``), when it is a valid id."""
    hub = report.get("hub")
    return hub_id(hub.get("repo_id")) if isinstance(hub, dict) else None


def _default_name(out: Path, report: dict[str, Any]) -> str:
    name = out.resolve().name
    if name.startswith(".") and ".tmp-" in name:  # rendered inside the pipeline's staging directory
        name = name[1:].split(".tmp-")[0]
    return name or "pruned-model"
