"""`hf-layerprune evaluate MODEL [--base BASE]`: lm-eval tasks, perplexity and speed, before and after."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from hf_layerprune.runtime.distributed import rank_zero_only
from hf_layerprune.cli.app import app
from hf_layerprune.runtime.errors import ConfigError, LayerPruneError, cli_errors
from hf_layerprune.recipe import UPPER_BOUNDS

console = Console(stderr=True)


def _limit(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--limit {text!r}: give a number of documents (20) or a fraction (0.1)") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--limit must be a positive finite number (got {text})")
    if value > UPPER_BOUNDS["limit"]:
        raise ConfigError(f"--limit {text} is more than the bound {UPPER_BOUNDS['limit']:,}")
    return int(value) if value >= 1 and value == int(value) else value


def summary_table(section: dict[str, Any]) -> Table:
    """A terminal table of the main numbers of an ``evaluation`` section."""
    from hf_layerprune.report.results import retentions

    has_base = section.get("base") is not None or bool((section.get("perplexity") or {}).get("base"))
    table = Table(title="Evaluation", show_lines=False)
    for col in ["task", "metric", "n-shot"] + (["base"] if has_base else []) + ["pruned" if has_base else "score"] + (
        ["Δ", "retention"] if has_base else []
    ):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    comparison = section.get("comparison") or {}
    for task, metrics in (section.get("pruned") or {}).items():
        for metric, rec in metrics.items():
            if rec.get("parent"):
                continue
            row = [task, metric, str(rec.get("n_shot", ""))]
            cmp = (comparison.get(task) or {}).get(metric)
            if has_base:
                base = ((section.get("base") or {}).get(task) or {}).get(metric) or {}
                row.append(f"{base['value']:.4f}" if base.get("value") is not None else "–")
            row.append(f"{rec['value']:.4f}")
            paired = ((section.get("paired") or {}).get("tasks") or {}).get(task) or {}
            if has_base and paired.get("metric") == metric:  # the paired SE from the per-doc scores
                row.append(f"{paired['delta']:+.4f} ± {paired['delta_se']:.4f}" + ("" if paired.get("included") else " (not in headline)"))
            elif has_base:
                row.append(f"{cmp['delta']:+.4f}" if cmp else "–")
                row.append(f"{cmp['retention_pct']:.1f}%" if cmp and cmp.get("retention_pct") is not None else "–")
            table.add_row(*row)
    gen = retentions(section.get("generation"))
    if gen is not None and has_base:  # generation fidelity: agreement, KL, the last-word test paired with the base
        table.add_row("generation", "top-1 agreement", "", "1.0000", f"{gen['top1']:.4f}", "", "")
        table.add_row("generation", "KL(base‖pruned)", "", "0", f"{gen['kl']:.4f}", "", "")
        if gen.get("last_word_retention") is not None:
            table.add_row("generation", f"last word ({gen['targets']} targets)", "", f"{gen['last_word_base']:.4f}",
                          f"{gen['last_word_pruned']:.4f}", "",
                          f"{gen['last_word_retention']:.1f}% ± {gen['last_word_se'] or 0:.1f}")
    ppl = section.get("perplexity") or {}
    for who in ("base", "pruned"):
        rec = ppl.get(who)
        if rec and (has_base or who == "pruned"):
            table.add_row(f"perplexity ({who})", f"{rec['seq_len']}-token windows", "", *([""] if has_base else []),
                          f"{rec['perplexity']:.3f}", *(["", ""] if has_base else []))
    return table


@app.command()
@cli_errors
@rank_zero_only  # under torchrun / accelerate launch: rank 0 alone
def evaluate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Pruned output directory, model directory, .gguf file or Hub id.")],
    base: Annotated[Optional[str], typer.Option(help="Base model to compare with (default: the base_model recorded in MODEL/layerprune.json).")] = None,
    no_base: Annotated[bool, typer.Option("--no-base", help="Evaluate MODEL alone.")] = False,
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated lm-eval tasks or presets: default, default+mmlu, local, local+mmlu; 'none' skips lm-eval.")] = None,
    limit: Annotated[Optional[str], typer.Option(help="Documents per task (20) or a fraction (0.1); for quick checks only.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help="Few-shot examples per task (default: each task's own).")] = None,
    batch_size: Annotated[int, typer.Option(help="lm-eval batch size.")] = 8,
    include_path: Annotated[Optional[Path], typer.Option(help="Directory of extra lm-eval task YAMLs (offline tasks).")] = None,
    perplexity: Annotated[str, typer.Option(help="Perplexity text: wikitext, a Hub dataset id[:config[:split]], a local .txt/.raw/.jsonl file, or none.")] = "wikitext",
    seq_len: Annotated[int, typer.Option(help="Perplexity context length (tokens per window).")] = 512,
    perplexity_max_tokens: Annotated[Optional[int], typer.Option(help="Score only the first N tokens of the perplexity text.")] = None,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Measure throughput, memory and size.")] = True,
    generation: Annotated[bool, typer.Option("--generation/--no-generation", help="With a base: generation fidelity on held-out text (top-1 agreement, KL, last-word test).")] = True,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the evaluation section to this JSON file.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of MODEL.")] = None,
    base_revision: Annotated[Optional[str], typer.Option(help="Hub revision of --base (default: the one recorded).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the lm-eval results cache.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading pickle .bin checkpoints.")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Let transformers run a model's own code (auto_map). Not needed for hf-layerprune's sub-layer (DeciLM) outputs, which load with the package's classes. Only for code you have read.")] = False,
) -> None:
    """Benchmark a (pruned) model, and its base with identical settings: lm-eval tasks, perplexity, speed and size.

    When MODEL is a hf-layerprune output, the results are written into its layerprune.json (`evaluation`) and its
    model card is re-rendered.
    """

    from hf_layerprune.evaluation import EvalSettings, check_tasks, reachable_text
    from hf_layerprune.flow.side_by_side import compare_models
    from hf_layerprune.evaluation.fidelity import held_out_text
    from hf_layerprune.surgery.loading import check_device, check_loadable, resolve_source, torch_dtype
    from hf_layerprune.runtime.outputs import check_output_file, model_paths
    from hf_layerprune.report import REPORT_FILENAME, EvaluationSection, load_report, write_report

    check_output_file(json_path, "--json", model_paths(model) + (model_paths(base) if base else []))
    check_device(device)
    torch_dtype(dtype)
    for name, value, bound in (("--batch-size", batch_size, "batch_size"), ("--seq-len", seq_len, "seq_len"),
                               ("--perplexity-max-tokens", perplexity_max_tokens, "perplexity_tokens"),
                               ("--num-fewshot", num_fewshot, "num_fewshot")):
        if value is not None and value < (0 if name == "--num-fewshot" else 1):
            raise ConfigError(f"{name} must be at least {0 if name == '--num-fewshot' else 1} (got {value})")
        if value is not None and value > UPPER_BOUNDS[bound]:
            raise ConfigError(f"{name} {value} is more than the bound {UPPER_BOUNDS[bound]:,}")
    out_dir = Path(model).expanduser()
    report = load_report(out_dir) if (out_dir / REPORT_FILENAME).is_file() else None
    if no_base and base:
        raise ConfigError("give either --base or --no-base, not both")
    if base is None and not no_base and report is not None:
        base = report.source.base_model
        base_revision = base_revision or report.source.base_revision
        try:
            resolve_source(base, base_revision, allow_pickle=allow_pickle, check_files=False)
        except LayerPruneError:  # a local base is recorded by name only (no local paths are published)
            raise ConfigError(f"the base model recorded in {REPORT_FILENAME} ({base}) is not here; pass --base PATH "
                              "(or --no-base)") from None
    task_list = [] if tasks and tasks.strip().lower() == "none" else tasks
    settings = EvalSettings(
        tasks=task_list, num_fewshot=num_fewshot, limit=_limit(limit), batch_size=batch_size,
        include_path=str(include_path) if include_path else None,
        perplexity=None if perplexity.strip().lower() == "none" else perplexity, seq_len=seq_len,
        ppl_max_tokens=perplexity_max_tokens, speed=speed, device=device, use_cache=not no_cache,
        generation=held_out_text(None if perplexity.strip().lower() in ("wikitext", "none") else perplexity)
        if generation and base else None,
    )
    check_tasks(settings)  # unknown tasks fail before any model is loaded
    # MODEL must be loadable before the base is evaluated (minutes): its source, and code of its own
    check_loadable(resolve_source(model, revision, allow_pickle=allow_pickle), trust_remote_code)  # shards whole too
    if base:
        check_loadable(resolve_source(base, base_revision, allow_pickle=allow_pickle, check_files=False),
                       trust_remote_code)
    settings.generation = reachable_text(settings.generation, "generation fidelity", lambda msg: console.print(msg, highlight=False))
    section = compare_models(model, base, settings, revision=revision, base_revision=base_revision, dtype=dtype,
                             allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                             log=lambda msg: console.print(msg, highlight=False))
    if speed and base and report is not None and report.gguf is not None and section.get("speed") is not None:
        from hf_layerprune.evaluation import llama_cpp_speed

        if llama_cpp_speed.installed():  # the GGUF output in llama.cpp, beside the transformers figures
            from hf_layerprune.flow.gguf_route import llama_cpp_gguf_speed

            section["speed"]["llama_cpp"] = llama_cpp_gguf_speed(
                report.gguf, settings, resolve_source(base, base_revision, allow_pickle=allow_pickle), out_dir, None,
                lambda msg: console.print(msg, highlight=False))
    from hf_layerprune.cli.options import command_line

    section["command"] = command_line(ctx)
    if base:
        section["settings"]["base_model"] = base
        section["settings"]["base_revision"] = base_revision
    Console().print(summary_table(section))
    if json_path:
        from hf_layerprune.runtime.outputs import write_text_atomic

        write_text_atomic(json_path, json.dumps(section, indent=2) + "\n")
        console.print(f"Wrote {json_path}", highlight=False)
    if report is not None:
        report.evaluation = EvaluationSection.from_dict(section)
        if (out_dir / "README.md").is_file():
            from hf_layerprune.flow.finish import card

            path = card(out_dir, report)  # layerprune.json and the card, from the report in memory
            console.print(f"Updated {out_dir / REPORT_FILENAME}", highlight=False)
            console.print(f"Re-rendered {path}", highlight=False)
        else:
            write_report(out_dir, report)
            console.print(f"Updated {out_dir / REPORT_FILENAME}", highlight=False)
