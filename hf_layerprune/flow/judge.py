"""The long-range judge of candidate cuts: what a candidate keeps of the model's next-word ability at long context,
read on held-out natural text (issue 35, "choose for it").

`auto` (flow/auto.py) and `--target` (flow/budget.py) both compare candidate cuts. The mean KL to the base model over
every token of short calibration sequences is cheap, but on SmolLM2 it ranked cuts the opposite way from the
long-range test of the evaluation (the last word of long passages: benchmarks/RESULTS.md, "A budget instead of a
depth"); the negative log-likelihood of those last words followed it. So candidates are judged by the mean NLL of
the last word of sentences of WikiText-2 *validation* articles (``JUDGE_DOCS`` articles, their first
``JUDGE_SEQ_LEN`` tokens; the targets are those of evaluation/fidelity.py: a word already seen in the article, after
at least 128 tokens of it). The evaluation's generation fidelity reads the *test* split, so the judge never sees
the text it is measured on. Without that text (offline with no local copy) the callers fall back to the KL.

One forward pass per document and candidate; only the target rows go through the LM head where the model accepts
``logits_to_keep`` (transformers' decoder LMs)."""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable

from hf_layerprune.evaluation.fidelity import local_data_file, prepare
from hf_layerprune.evaluation.perplexity import load_text_rows
from hf_layerprune.runtime.errors import LayerPruneError

Log = Callable[[str], None]
JUDGE_DOCS, JUDGE_SEQ_LEN = 16, 1024  # held-out articles (their first tokens) whose last words judge the candidates


def judge_text() -> str:
    """``$LAYERPRUNE_JUDGE_TEXT`` when set (a file or a Hub dataset ``id:config:split``; e.g. text in the model's
    language), else WikiText-2's validation split: a local copy (``$LAYERPRUNE_DATA_DIR/wikitext2_tokens/
    wiki.valid.tokens`` or ``../shared/data`` beside a checkout), else the Hub dataset."""
    return (os.environ.get("LAYERPRUNE_JUDGE_TEXT") or local_data_file("wikitext2_tokens/wiki.valid.tokens")
            or "wikitext:wikitext-2-raw-v1:validation")


def long_range_documents(tokenizer, model=None, *, who: str = "the judge",
                         log: Log = print) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(documents with last-word targets, their source) to judge candidates on; (None, None) without text. The
    window is capped at the model's context length."""
    if tokenizer is None:
        return None, None
    try:
        rows, name = load_text_rows(judge_text())
    except LayerPruneError as exc:
        log(f"{who}: no held-out natural text to judge the last words on ({exc}); judging by KL")
        return None, None
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    seq_len = min(JUDGE_SEQ_LEN, limit) if isinstance(limit, int) and limit > 1 else JUDGE_SEQ_LEN
    docs = [d for d in prepare(tokenizer, rows, docs=JUDGE_DOCS, seq_len=seq_len) if d["targets"]]
    return (docs or None), name


def _keeps_logits(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def last_word_scores(model, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """{"last_word_nll": mean NLL of a target word (nats, all its tokens), "last_word_accuracy": share of targets
    whose every token is the greedy choice, "last_word_targets": count} of `model` on `docs` (``prepare``'s
    documents); the same values as fidelity.score_document's ``logprob_pruned`` / ``pruned`` per target."""
    import torch

    device = next(model.parameters()).device
    keep = _keeps_logits(model)
    nll, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for doc in docs:
            rows = sorted({r for _, a, b in doc["targets"] for r in range(a - 1, b - 1)})  # row j predicts token j+1
            ids = torch.tensor([doc["ids"]], device=device)
            extra = {"logits_to_keep": torch.tensor(rows, device=device)} if keep else {}
            logits = model(input_ids=ids, use_cache=False, **extra).logits[0]
            at = {r: i for i, r in enumerate(rows)} if keep else {r: r for r in rows}
            for _, a, b in doc["targets"]:
                picked = torch.log_softmax(logits[[at[r] for r in range(a - 1, b - 1)]].float(), dim=-1)
                want = torch.tensor(doc["ids"][a:b], device=device)
                nll -= float(picked.gather(-1, want[:, None]).double().sum())
                correct += int(bool((picked.argmax(-1) == want).all()))
                count += 1
    return {"last_word_nll": nll / count if count else None,
            "last_word_accuracy": correct / count if count else None, "last_word_targets": count}
