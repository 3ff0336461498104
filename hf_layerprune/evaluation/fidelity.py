"""Generation fidelity: how closely the pruned model still says what the base model says, on held-out natural text
at long context (docs/evaluation.md, "Generation fidelity").

Multiple-choice accuracy hides where depth pruning hurts: the text a model generates. This measure needs no
benchmark harness and works offline for any causal LM, given a text that calibration never saw (by default the
WikiText-2 raw *test* split; calibration is the model's own text, a Hub dataset or the user's files, and
``checks.py`` refuses a calibration file that is this text).

1. Documents: the text's top-level articles (WikiText headings `` = Title = ``; a text without such headings is one
   document per non-blank row). The first ``docs`` documents with at least ``MIN_DOC_TOKENS`` tokens are used, each
   as one window of its first ``seq_len`` tokens (long context: every position sees the document from its start).
2. Both models score every window, one document at a time (the base through ``as_base``: the same weights when the
   base is a ``SharedBase`` view). Per document: **top-1 agreement** (share of positions where the pruned model's
   most likely next token is the base model's), **KL(base ‖ pruned)** of the next-token distributions (nats, mean
   over positions), and each model's next-token NLL on the text.
3. A long-range test (LAMBADA-style): the **last word of a paragraph** whose document context before it is at least
   ``MIN_CONTEXT`` tokens and which already occurs earlier in that context (so that the passage, not the sentence,
   predicts it). A target counts as correct when every one of its tokens is the model's greedy (argmax) choice
   given the text before it, as lm-eval's LAMBADA ``acc``; its log-probability is kept too.

Standard errors are over documents (KL, agreement) or targets (the last-word test, paired with the base on the same
targets: ``paired.compare_task``), the same rule as the benchmark table. The per-document and per-target values are
stored, so every number can be re-checked from the report.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from hf_layerprune.surgery.base_view import as_base
from hf_layerprune.runtime.errors import ConfigError, LayerPruneError
from hf_layerprune.evaluation.paired import Z, compare_task, standard_error
from hf_layerprune.evaluation.perplexity import load_text_rows
from hf_layerprune.report.results import retentions  # noqa: F401 - re-exported

DEFAULT_DOCS = 16
DEFAULT_SEQ_LEN = 1024
MIN_CONTEXT = 128  # tokens of document before a last-word target
MIN_DOC_TOKENS = 256
CHUNK = 128  # positions per step of the KL sum
HEADING = re.compile(r"^ = [^=].* = \s*$")  # a WikiText top-level heading (sections are " = = ... = = ")
SENTENCE_END = re.compile(r"(\w+)(?=\s*(?:[.!?](?:\s|$)|\s*$))")  # a word before . ! ? or the line end

Log = Callable[[str], None]


def held_out_text(given: str | None = None) -> str:
    """The held-out text: the one given (``--perplexity``), else a local WikiText-2 test file
    (``$LAYERPRUNE_DATA_DIR/wikitext2_raw/wiki.test.raw``, or ``../shared/data`` beside a checkout), else the Hub's."""
    return given or local_data_file("wikitext2_raw/wiki.test.raw") or "wikitext"


def local_data_file(relative: str) -> str | None:
    """``relative`` under ``$LAYERPRUNE_DATA_DIR``, else under ``../shared/data`` beside a checkout; None when
    neither has it."""
    roots = [os.environ.get("LAYERPRUNE_DATA_DIR"), Path(__file__).resolve().parents[3] / "shared" / "data"]
    for root in filter(None, roots):
        path = Path(root) / relative
        if path.is_file():
            return str(path)
    return None


def check_held_out(held_out: str, **texts: str | None) -> None:
    """Refuse a calibration or healing text that is the held-out text itself (``calibration="path"``): the
    generation figures would then not be held out."""
    target = Path(os.path.expanduser(held_out))
    if not target.is_file():
        return
    for name, value in texts.items():
        for part in str(value or "").split(","):
            path = Path(os.path.expanduser(part.strip()))
            if part.strip() and path.is_file() and path.resolve() == target.resolve():
                flag = name.replace("_", "-")
                raise ConfigError(f"--{flag} {part.strip()} is the held-out text of the generation fidelity "
                                      "measure; calibrate and heal on other text (or pass --perplexity OTHER_FILE)")


def documents(rows: list[str]) -> list[str]:
    """The text's documents: WikiText articles split at top-level headings, else one per non-blank row."""
    starts = [i for i, row in enumerate(rows) if HEADING.match(row)]
    if not starts:
        return [row for row in rows if row.strip()]
    bounds = starts + [len(rows)]
    return ["".join(rows[a:b]) for a, b in zip(bounds, bounds[1:])]


def last_word_targets(text: str) -> list[tuple[int, int]]:
    """[(start, end)] character spans of the last word of each sentence (before ``.``, ``!`` or ``?``, or at the end
    of a paragraph) that has a letter in it and already occurs as a whole word earlier in the document."""
    out = []
    pos = 0
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("="):
            for m in SENTENCE_END.finditer(line):
                word, start = m.group(1), pos + m.start(1)
                if any(c.isalpha() for c in word) and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text[:start]):
                    out.append((start, start + len(word)))
        pos += len(line)
    return out


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """Token positions [a, b) that spell exactly the characters [start, end) (a leading space in the first token
    allowed); None when a token straddles the word's edges."""
    a = next((i for i, (s, e) in enumerate(offsets) if e > start), None)
    if a is None or not start - 1 <= offsets[a][0] <= start:
        return None
    b = a
    while b < len(offsets) - 1 and offsets[b][1] < end:
        b += 1
    return (a, b + 1) if offsets[b][1] == end else None


def encode(tokenizer, text: str, seq_len: int) -> tuple[list[int], list[tuple[int, int]] | None]:
    """(ids of the first ``seq_len`` tokens, their character offsets or None when the tokenizer gives none)."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True, return_attention_mask=False)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        enc, offsets = tokenizer(text, return_attention_mask=False), None
    ids = list(enc["input_ids"])[:seq_len]
    return ids, (offsets[:seq_len] if offsets is not None else None)


def prepare(tokenizer, rows: list[str], docs: int = DEFAULT_DOCS, seq_len: int = DEFAULT_SEQ_LEN) -> list[dict[str, Any]]:
    """[{"doc", "ids", "targets": [(word, first token, end token)]}] for the first ``docs`` long-enough documents."""
    out = []
    for n, text in enumerate(documents(rows)):
        if len(out) >= docs:
            break
        ids, offsets = encode(tokenizer, text, seq_len)
        if len(ids) < min(MIN_DOC_TOKENS, seq_len):
            continue
        targets = []
        for start, end in last_word_targets(text) if offsets is not None else []:
            span = _token_span(offsets, start, end)
            if span is not None and span[0] >= MIN_CONTEXT and span[1] <= len(ids):
                targets.append((text[start:end], span[0], span[1]))
        out.append({"doc": n, "ids": ids, "targets": targets})
    return out


def logprobs(model, ids):
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, :-1].float()
        for rows in logits.split(CHUNK):  # log-softmax in place, a chunk of rows at a time: one [T, vocab] tensor
            rows -= rows.logsumexp(-1, keepdim=True)  # alive, not two (0.2 GB each at 1024 x 49k)
    return logits.cpu()


def score_document(base_lp, pruned_lp, ids: list[int], targets) -> dict[str, Any]:
    """One document's per-position means and per-target scores from both models' next-token log-probabilities
    (``[T-1, vocab]``; row j predicts token j+1)."""
    import torch

    nxt = torch.tensor(ids[1:])
    kl = torch.cat([(b.exp() * (b - p)).sum(-1) for b, p in zip(base_lp.split(CHUNK), pruned_lp.split(CHUNK))])
    kl = kl.clamp_min(0)  # per position; in chunks, so that no third [positions, vocab] tensor is alive
    b_top, p_top = base_lp.argmax(-1), pruned_lp.argmax(-1)
    rec: dict[str, Any] = {
        "tokens": len(ids) - 1,
        "kl": float(kl.double().mean()),
        "top1": float((b_top == p_top).double().mean()),
        "nll_base": float(-base_lp.gather(-1, nxt[:, None]).double().mean()),
        "nll_pruned": float(-pruned_lp.gather(-1, nxt[:, None]).double().mean()),
    }
    words = []
    for word, a, b in targets:
        rows, want = slice(a - 1, b - 1), nxt[a - 1 : b - 1]
        words.append({
            "word": word,
            "position": a,
            "base": int(bool((b_top[rows] == want).all())),
            "pruned": int(bool((p_top[rows] == want).all())),
            "logprob_base": float(base_lp[rows].gather(-1, want[:, None]).double().sum()),
            "logprob_pruned": float(pruned_lp[rows].gather(-1, want[:, None]).double().sum()),
        })
    rec["targets"] = words
    return rec


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(per_doc: list[dict[str, Any]], z: float = Z) -> dict[str, Any]:
    """Means over documents with their SEs, and the last-word test paired with the base over its targets."""
    out: dict[str, Any] = {"docs": len(per_doc), "tokens": sum(d["tokens"] for d in per_doc)}
    for key in ("kl", "top1", "nll_base", "nll_pruned"):
        values = [d[key] for d in per_doc]
        out[key] = _mean(values)
        out[f"{key}_se"] = standard_error(values)
    diffs = [d["nll_pruned"] - d["nll_base"] for d in per_doc]
    out["nll_delta"], out["nll_delta_se"] = _mean(diffs), standard_error(diffs)
    targets = [t for d in per_doc for t in d["targets"]]
    out["last_word"] = None
    if len(targets) >= 2:
        ids = list(range(len(targets)))
        rec = compare_task({"doc_id": ids, "acc": [t["base"] for t in targets]},
                           {"doc_id": ids, "acc": [t["pruned"] for t in targets]}, "acc", z)
        rec["retention_se_pts"] = 100.0 * rec["delta_se"] / rec["base"] if rec["base"] else None
        for who in ("base", "pruned"):  # perplexity of the target words (per word)
            rec[f"word_perplexity_{who}"] = math.exp(-_mean([t[f"logprob_{who}"] for t in targets]))
        out["last_word"] = {k: rec[k] for k in ("docs", "base", "pruned", "base_se", "pruned_se", "delta", "delta_se",
                                                "measurable", "retention_pct", "retention_se_pts", "included",
                                                "word_perplexity_base", "word_perplexity_pruned")}
        out["last_word"]["targets"] = out["last_word"].pop("docs")
    return out


def generation_fidelity(base_model, pruned_model, tokenizer, rows: list[str], *, source: str,
                        docs: int = DEFAULT_DOCS, seq_len: int = DEFAULT_SEQ_LEN, log: Log = print) -> dict[str, Any] | None:
    """The report's ``evaluation.generation`` section (module doc): settings, summary and per-document values; None
    when no document is long enough."""
    if seq_len < 2:
        raise ConfigError("the generation fidelity window needs at least 2 tokens")
    prepared = prepare(tokenizer, rows, docs, seq_len)
    if not prepared:
        log(f"Skipping generation fidelity: no document of {source} has {min(MIN_DOC_TOKENS, seq_len)} tokens")
        return None
    log(f"Generation fidelity: {len(prepared)} documents x {seq_len} tokens, base and pruned")
    per_doc = []
    for item in prepared:
        with as_base(base_model) as base:
            base_lp = logprobs(base, item["ids"])
        pruned_lp = logprobs(pruned_model, item["ids"])
        per_doc.append({"doc": item["doc"], **score_document(base_lp, pruned_lp, item["ids"], item["targets"])})
    return {
        "settings": {"source": source, "docs": docs, "seq_len": seq_len, "min_context": MIN_CONTEXT,
                     "min_doc_tokens": MIN_DOC_TOKENS},
        "summary": summarize(per_doc),
        "per_doc": per_doc,
    }


def reachable_text(source: str | None, what: str, log: Log = print) -> str | None:
    """``source`` when its text can be loaded now (offline: a local file), else None with a note in the log."""
    if not source:
        return None
    try:
        load_text_rows(source)
    except LayerPruneError as exc:
        log(f"Skipping {what}: {exc}")
        return None
    return source


def fidelity_of_pair(base_model, pruned_model, tokenizer, settings, *, log: Log = print) -> dict[str, Any] | None:
    """``generation_fidelity`` on the settings' held-out text (None when the settings name none), its window capped at
    the model's context length (``settings``: an ``EvalSettings``)."""
    s = settings
    if not s.generation or s.generation_docs < 1:
        return None
    rows, source = load_text_rows(s.generation)
    limit = getattr(pruned_model.config, "max_position_embeddings", None)
    seq_len = min(s.generation_seq_len, limit) if isinstance(limit, int) and limit > 1 else s.generation_seq_len
    return generation_fidelity(base_model, pruned_model, tokenizer, rows, source=source, docs=s.generation_docs,
                               seq_len=seq_len, log=log)


