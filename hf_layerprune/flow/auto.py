"""`--metric auto` (the default for whole layers): a selection strategy above scoring that compares the candidate
cuts of several metrics, judged after healing.

The static metrics disagree, and which one is right depends on the model and the depth (SmolLM2-135M-Instruct:
angular's contiguous block was best at drop 6 and a disaster at drop 9, where bi's scattered layers held up;
benchmarks/RESULTS.md). So `auto` does what the issue of healability asks for:

1. score ``AUTO_METRICS`` (angular, cosine, bi) from one shared capture pass, each with its own selection;
2. for each distinct candidate set, cut the model and heal it, as a reversible patch (`base_view.trial`), with the
   recipe's closed-form healer (`linear`, `bias`, `projection`; the closed-form head of a chain such as `linear+distill`; for `absorb` its
   closed-form proxy `linear`; none for the other trained healers, whose cost would multiply);
3. keep the candidate that keeps most of the model's long-range next-word ability: the lowest negative
   log-likelihood of the last words of held-out natural text (flow/judge.py: WikiText-2 *validation* articles at
   1,024 tokens; the evaluation reads the test split). On SmolLM2 this ranks cuts as the evaluation's long-range
   test does, where the mean KL over every token of short calibration text ranked them the other way
   (benchmarks/RESULTS.md). KL(base ‖ candidate) and the loss on ``HELD_OUT`` held-out calibration sequences (for
   `self`, sampled from the model like the calibration set) are recorded beside it, and the KL decides when no
   natural text can be read (offline without a local copy).

Cost: one capture pass, then per distinct candidate one healing fit, one pass over the held-out calibration text
and one over the judge's articles (16 x 1,024 tokens). Memory: no copy of the model;
the judge healer copies only the modules it changes, and everything is undone after each candidate.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from hf_layerprune.flow.judge import last_word_scores, long_range_documents
from hf_layerprune.runtime import progress
from hf_layerprune.surgery.base_view import trial
from hf_layerprune.runtime.calibration import calibration_batches
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.runtime.selection import contiguous_positions, parse_protect
from hf_layerprune.healing import HEALERS, heal_chain, heal_for_recipe
from hf_layerprune.healing.training import kl_to_base, lm_loss
from hf_layerprune.recipe import AUTO
from hf_layerprune.report import CalibrationRecord, Candidate, CutSection, JudgedWith, ScoringSection
from hf_layerprune.scoring import build_context, get_metric, run_metric
from hf_layerprune.surgery.layers import kept_layers, remove_layers

AUTO_METRICS = ("angular", "cosine", "bi")
BLOCK_POSITIONS = 2  # positions of a contiguous metric's block judged: its best and the runner-up
HELD_OUT = 8

Log = Callable[[str], None]


def ranking_healer(heal: str | None, model=None, *, long_range: bool = False) -> str:
    """The healer used to judge candidates: the recipe's closed-form healers (the head of a chain), then, for the KL
    judge, the closed-form proxy of the first trained one (`absorb` -> `linear`: the same fold site, a linear map
    instead of a trained layer; only if the proxy does not refuse `model`, e.g. sparse-MoE MLPs with nowhere to
    fold); none for the other trained healers, whose cost would multiply.

    The long-range judge (`long_range`) takes no proxy: on SmolLM2 at drop 6, `linear` fitted on short calibration
    sequences made bi's cut worse on the last words of long passages (NLL 3.63 -> 3.87) and ranked it below the
    contiguous 13-18, while `absorb` itself lifts bi's cut far above it (79% against 49% of the last-word test);
    unhealed, the judge ranks them as `absorb` leaves them (benchmarks/RESULTS.md)."""
    head = []
    for step in heal_chain(heal):
        if step.healer.trained:
            proxy = None if long_range else step.healer.proxy
            usable = proxy and (model is None or HEALERS[proxy].refuses(model) is None)
            if usable and proxy not in head:
                head.append(proxy)
            break
        head.append(step.spec)
    return "+".join(head) or "none"


def _other_blocks(record: dict[str, Any], recipe, num_units: int) -> list[list[int]]:
    """The next ``BLOCK_POSITIONS - 1`` best blocks of a contiguous selection (its block scores), best first
    (labelled "(2nd block)": BLOCK_POSITIONS is 2)."""
    blocks = ((record.get("scores") or {}).get("blocks") or {}).get(str(recipe.drop))
    if record.get("selection") != "contiguous" or not blocks:
        return []
    return contiguous_positions(blocks, recipe.drop, BLOCK_POSITIONS,
                                higher_is_more_important=record["higher_is_more_important"],
                                protected=parse_protect(recipe.protect, num_units))[1:]


def auto_context(model, tokenizer, recipe, log: Log = print):
    """The shared calibration set and capture pass of the AUTO_METRICS: (ScoringContext, calibration record)."""
    return build_context(
        model, tokenizer, [get_metric(name) for name in AUTO_METRICS], calibration=recipe.calibration,
        samples=recipe.calibration_samples, seq_len=recipe.seq_len, seed=recipe.seed, text_column=recipe.text_column,
        log=log,
    )


def _judge_all(model, tokenizer, recipe, judge: str, candidates: dict, docs, source,
               log: Log) -> list[Candidate]:
    """Each candidate selection judged after the judge healer on the same held-out text (with `docs`, the
    long-range articles from `source`, too)."""
    held_out = calibration_batches(
        recipe.calibration, tokenizer, model=model, samples=recipe.calibration_samples + HELD_OUT,
        seq_len=recipe.seq_len, seed=recipe.seed, text_column=recipe.text_column,
    )[-HELD_OUT:]
    num_layers = model.config.num_hidden_layers
    quiet = dataclasses.replace(recipe, heal=judge)
    by = (f"by the last words of {len(docs)} held-out articles of {Path(source).name}" if docs
          else "by KL to the base model on held-out text")
    log(f"Comparing {len(candidates)} candidate selections ({', '.join('/'.join(c['metrics']) for c in candidates.values())}) "
        f"{by} after --heal {judge}")
    results = []
    with progress.stage("select"):
        bar = progress.task(f"candidates judged after --heal {judge}", total=len(candidates), unit="candidates")
        for selected, entry in candidates.items():
            results.append(_judge(model, tokenizer, quiet, judge, selected, entry, held_out, docs, num_layers, log))
            bar.advance(1)
    return results


def _judge(model, tokenizer, quiet, judge: str, selected, entry, held_out, docs, num_layers: int, log: Log) -> Candidate:
    """One candidate: cut and heal in place as a reversible trial, its held-out loss and KL and (with `docs`) its
    last-word scores, every bit restored."""
    removed = list(selected)
    with trial(model) as base:  # cut and heal in place, undone on exit: no copy of the model
        remove_layers(model, removed)
        if judge != "none":
            cut = CutSection(num_layers_after=num_layers - len(removed), removed_layers=removed,
                             kept_layers=kept_layers(removed, num_layers))
            heal_for_recipe(model, tokenizer, quiet, cut, base_model=base, log=lambda message: None)
        loss = lm_loss(model, held_out)
        kl = kl_to_base(model, base, held_out)
        words = last_word_scores(model, docs) if docs else {}
    said = (f", last-word NLL {words['last_word_nll']:.4f} (accuracy {words['last_word_accuracy']:.1%})"
            if words.get("last_word_nll") is not None else "")
    log(f"  {'/'.join(entry['metrics'])}: layers {removed} -> held-out KL to the base {kl:.4f}, loss {loss:.4f}{said}")
    return Candidate(metrics=entry["metrics"], selected=removed, held_out_loss=loss, held_out_kl=kl,
                     last_word_nll=words.get("last_word_nll"), last_word_accuracy=words.get("last_word_accuracy"))


def auto_select(model, tokenizer, recipe, *, shared=None, log: Log = print) -> tuple[list[int], ScoringSection]:
    """(layers to remove, scoring section) for `--metric auto`; `model` is the unpruned model (left unchanged).

    `shared`: an `auto_context(...)` result to reuse (a sweep scores once for every depth)."""
    if recipe.granularity != "block":
        raise ConfigError("--metric auto chooses whole layers; give --metric bi|shapley|ppl for sub-layers")
    start = time.perf_counter()
    metrics = [get_metric(name) for name in AUTO_METRICS]
    ctx, calibration = shared or auto_context(model, tokenizer, recipe, log)
    candidates: dict[tuple[int, ...], dict[str, Any]] = {}
    records = {}
    for metric in metrics:
        records[metric.name] = record = run_metric(metric, ctx, drop=recipe.drop, selection=recipe.selection,
                                                   protect=recipe.protect)
        entry = candidates.setdefault(tuple(record["selected"]), {"metrics": [], "record": record})
        entry["metrics"].append(metric.name)
    for metric in metrics:  # the runner-up positions of each contiguous block
        record = records[metric.name]
        for block in _other_blocks(record, recipe, ctx.num_units):
            entry = candidates.setdefault(tuple(block), {"metrics": [], "record": {**record, "selected": block}})
            entry["metrics"].append(f"{metric.name} (2nd block)")
    docs, source = None, None
    if len(candidates) == 1:  # every metric chose the same layers: nothing to judge (on a 7B CPU run, 44 minutes)
        (selected, entry), = candidates.items()
        log(f"{'/'.join(entry['metrics'])} agree on layers {list(selected)}: no candidates to judge")
        results = [Candidate(metrics=entry["metrics"], selected=list(selected))]
        best, judge = results[0], ranking_healer(recipe.heal, model)
    else:
        docs, source = long_range_documents(tokenizer, model, who="--metric auto", log=log)
        judge = ranking_healer(recipe.heal, model, long_range=bool(docs))
        results = _judge_all(model, tokenizer, recipe, judge, candidates, docs, source, log)
        best = min(results, key=lambda r: (r.last_word_nll if docs else 0.0, r.held_out_kl, r.held_out_loss))

    chosen = ScoringSection.from_dict(candidates[tuple(best.selected)]["record"])
    section = chosen.but(
        metric=AUTO,
        chosen_metric=best.metrics[0],
        candidates=results,
        judged_with=JudgedWith(heal=judge, objective="last_word_nll" if docs else "kl_to_base",
                               held_out_samples=HELD_OUT, seq_len=recipe.seq_len, long_range_text=source if docs else None,
                               long_range_docs=len(docs) if docs else None) if len(results) > 1 else None,
        calibration=CalibrationRecord.from_dict(calibration),
        seconds=round(time.perf_counter() - start, 3),
    )
    return best.selected, section
