"""Calibration text -> a [samples, seq_len] LongTensor of token ids, built once and reused by every metric.

Sources (``--calibration``):

- ``self`` (the default, data-free): text sampled from the model itself. Each sample is one window that starts
  where the model's text starts: the chat template's assistant turn for instruct models (after a short neutral
  request), else BOS; then ``seq_len`` tokens in all, sampled at temperature 1 with the seed (batched
  ``generate``, KV cache), continuing past EOS so that the model writes its own separators. Windows cut from
  the middle of a sample would start without context (measured on a tiny model: loss 2.6 -> 7.0). Without a
  tokenizer (tiny test checkpoints) token ids are sampled directly from BOS, and the record says so.
- local files: ``.txt`` / ``.raw`` / ``.tokens`` (each file one document), ``.jsonl`` (one document per line,
  from ``text_column``), ``.parquet``; globs (``data/*.jsonl``) and comma-separated lists.
- a Hub dataset ``id[:config[:split]]`` (e.g. ``wikitext:wikitext-2-raw-v1:train``) via ``datasets``.

Text documents are shuffled with the seed, tokenized until there are enough tokens, joined with EOS separators
and cut into non-overlapping ``seq_len`` windows; ``samples`` of them are picked with the seed. Same inputs, same
tensor. ``calibration_record`` describes the result for the report (with a fingerprint of the ids).
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from hf_layerprune.runtime import progress
from hf_layerprune.runtime.errors import ConfigError, HubError, StageError
from hf_layerprune.runtime.registry import Registry

TEXT_SUFFIXES = (".txt", ".raw", ".tokens")
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
SELF = "self"
TEMPERATURE = 1.0
TOP_P = 1.0
SELF_BATCH = 32  # sequences generated together
# Neutral requests that open an instruct model's assistant turn for `self` calibration (chosen per sample).
SELF_PROMPTS = (
    "Write a short article about a topic of your choice.",
    "Tell me a story.",
    "Explain how something you know well works.",
    "Describe a place, a person or an event in detail.",
    "Write a letter to a friend.",
    "Give some advice on a practical problem.",
    "Summarize what you know about a period of history.",
    "Write a short essay about science.",
)


def calibration_batches(
    source: str,
    tokenizer,
    *,
    model=None,
    samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    text_column: str | None = None,
) -> torch.LongTensor:
    """Token ids of shape [samples, seq_len] from `source` (see module docstring); deterministic in `seed`."""
    if samples < 1 or seq_len < 2:
        raise ConfigError(f"calibration needs samples >= 1 and seq_len >= 2 (got {samples} x {seq_len})")
    kind = SOURCES[source_kind(source)]
    with progress.stage("calibrate"):
        if kind.documents is None:  # `self`: token ids sampled from the model
            if model is None:
                raise StageError("--calibration self samples text from the model; no model was given")
            return _self_samples(model, tokenizer, samples, seq_len, seed)
        if tokenizer is None:
            raise ConfigError(f"calibration text {source!r} needs a tokenizer and the model has none; use --calibration self")
        return _windows(kind.documents(source, text_column), tokenizer, samples, seq_len, seed, source)


def calibration_record(
    source: str,
    tokenizer=None,
    *,
    model=None,
    samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    text_column: str | None = None,
    batches: torch.Tensor | None = None,
) -> dict[str, Any]:
    """What the calibration set is, for the report: {source, kind, samples, seq_len, seed, tokens, ...}."""
    kind = source_kind(source)
    record: dict[str, Any] = {"source": source, "kind": kind, "samples": samples, "seq_len": seq_len, "seed": seed,
                              "tokens": samples * seq_len}
    if kind == "self":
        record["sampling"] = {"prompt": _self_prompt_kind(tokenizer), "temperature": TEMPERATURE, "top_p": TOP_P,
                              "stops_at_eos": False}
    elif kind == "files":
        record["files"] = [str(p) for p in _expand_files(source)]
    if text_column:
        record["text_column"] = text_column
    if batches is not None:
        record["tokens"] = int(batches.numel())
        record["fingerprint"] = fingerprint(batches)
    return record


def fingerprint(batches: torch.Tensor) -> str:
    """Short sha256 of the token ids: two runs calibrated on the same tokens show the same value."""
    return hashlib.sha256(batches.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class CalibrationSource:
    """One kind of `--calibration` value (registry.py): which values it takes, and how it reads their documents
    (None: it makes token ids itself, as `self` does)."""

    name: str
    summary: str
    matches: Callable[[str], bool]
    documents: Callable[[str, str | None], list[str]] | None = None


SOURCES: Registry[CalibrationSource] = Registry("calibration source", "--calibration")


def source_kind(source: str) -> str:
    """The first calibration source kind that takes `source`: 'self', 'files' (local paths or globs) or 'hub'."""
    return next(name for name, kind in SOURCES.items() if kind.matches(source))


def _is_files(source: str) -> bool:
    return any(_looks_like_path(p) for p in (p.strip() for p in source.split(",")) if p)


def _looks_like_path(part: str) -> bool:
    return (
        Path(part).expanduser().exists()
        or any(ch in part for ch in "*?[")
        or part.endswith(FILE_SUFFIXES)
        or part.startswith((".", "/", "~"))
    )


# ------------------------------------------------------------------------------------------ self-generated


def _self_prompt_kind(tokenizer) -> str:
    if tokenizer is None:
        return "bos-token-ids (no tokenizer)"
    return "chat-template" if getattr(tokenizer, "chat_template", None) else "bos"


def _start_ids(model, tokenizer, count: int, rng: torch.Generator) -> list[list[int]]:
    """Prompt ids per sample: the assistant turn for chat models, else a lone BOS (or EOS as a document break)."""
    config = model.config
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        picks = torch.randint(len(SELF_PROMPTS), (count,), generator=rng).tolist()
        out = []
        for i in picks:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": SELF_PROMPTS[i]}], add_generation_prompt=True, tokenize=True
            )
            if hasattr(ids, "keys"):  # BatchEncoding in some versions
                ids = ids["input_ids"]
            out.append(list(ids))
        return out
    start = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if start is None:
        start = config.bos_token_id if getattr(config, "bos_token_id", None) is not None else _eos_id(model, tokenizer)
    if start is None:
        start = 0
    return [[int(start)] for _ in range(count)]


def _eos_id(model, tokenizer) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


# Generated batches, reused when the same weights are asked for the same batch again (the pipeline samples
# calibration text from the model and then healing text from its unpruned copy: the first batches are the same).
_SELF_MEMO: dict[tuple, list[list[int]]] = {}
_SELF_MEMO_SIZE = 64


@torch.no_grad()
def weights_fingerprint(model) -> tuple:
    """Identity of the weights' values (not of the object): equal for a deep copy, different after any edit."""
    sums = torch.stack([p.detach().float().sum() for p in model.parameters()])
    return (type(model).__name__, tuple(sums.shape), float(sums.double().sum()), float(sums.double().abs().sum()),
            float((sums.double() * torch.arange(1, len(sums) + 1, dtype=torch.float64, device=sums.device)).sum()))


def _self_samples(model, tokenizer, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """[samples, seq_len]: each row is its prompt followed by tokens sampled from the model (KV cache, batched).

    Each row is one window that starts where the model's text starts (BOS / the assistant turn), so no window
    begins mid-text without context; sampling does not stop at EOS, the model writes its own separators."""
    device = next(model.parameters()).device
    eos = _eos_id(model, tokenizer)
    pad = eos if eos is not None else 0
    rng = torch.Generator().manual_seed(seed)
    devices = [device] if device.type == "cuda" else []
    rows: list[list[int]] = []
    identity = (weights_fingerprint(model), getattr(tokenizer, "name_or_path", None), seq_len, seed)
    bar = progress.task("sampling text from the model", total=samples * seq_len, unit="tokens")
    for number, first in enumerate(range(0, samples, SELF_BATCH)):
        prompts = _start_ids(model, tokenizer, min(SELF_BATCH, samples - first), rng)
        prompts = [p if len(p) <= seq_len // 2 else p[:1] for p in prompts]  # short windows: first token only
        key = (*identity, number, tuple(map(tuple, prompts)))
        if key in _SELF_MEMO:
            rows.extend(_SELF_MEMO[key])
            bar.advance(len(prompts) * seq_len)
            continue
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed * 1000003 + number)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
                    max_new_tokens=seq_len - min(len(p) for p in prompts), pad_token_id=pad, eos_token_id=None,
                    use_cache=True, logits_processor=[_CountTokens(bar, len(prompts))],
                )
        batch = [prompt + row[: seq_len - len(prompt)] for prompt, row in zip(prompts, out[:, width:].tolist())]
        if len(_SELF_MEMO) >= _SELF_MEMO_SIZE:
            _SELF_MEMO.pop(next(iter(_SELF_MEMO)))
        _SELF_MEMO[key] = batch
        rows.extend(batch)
    bar.done()
    return torch.tensor(rows, dtype=torch.long)


class _CountTokens:
    """A logits processor that changes nothing: it advances the sampling bar by one token per row and step."""

    def __init__(self, bar, rows: int) -> None:
        self.bar, self.rows = bar, rows

    def __call__(self, input_ids, scores):
        self.bar.advance(self.rows)
        return scores


# ------------------------------------------------------------------------------------------ text sources


def _expand_files(source: str) -> list[Path]:
    files: list[Path] = []
    for part in (p.strip() for p in source.split(",")):
        if not part:
            continue
        matches = sorted(glob.glob(str(Path(part).expanduser()))) if any(c in part for c in "*?[") else [part]
        if not matches:
            raise ConfigError(f"calibration glob {part!r} matches no files")
        for m in matches:
            path = Path(m).expanduser()
            if not path.is_file():
                raise ConfigError(f"calibration file not found: {m}")
            if not path.name.endswith(FILE_SUFFIXES):
                raise ConfigError(f"calibration file {m} must be one of {', '.join(FILE_SUFFIXES)}")
            files.append(path)
    return files


def _local_documents(source: str, text_column: str | None) -> list[str]:
    docs: list[str] = []
    for path in _expand_files(source):
        if path.name.endswith(TEXT_SUFFIXES):
            docs.append(path.read_text(encoding="utf-8", errors="replace"))
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            docs.extend(_column(rows, text_column, str(path)))
        else:  # parquet
            import pyarrow.parquet as pq

            docs.extend(_column(pq.read_table(path).to_pylist(), text_column, str(path)))
    return docs


def _column(rows: list[dict], text_column: str | None, where: str) -> list[str]:
    if not rows:
        return []
    column = text_column or ("text" if "text" in rows[0] else next((k for k, v in rows[0].items() if isinstance(v, str)), None))
    if column is None or column not in rows[0]:
        raise ConfigError(f"{where} has no text column {text_column or 'text'!r}; give --text-column (columns: {', '.join(rows[0])})")
    return [str(r[column]) for r in rows if r.get(column)]


def _hub_documents(source: str, text_column: str | None) -> list[str]:
    name, config, split = (source.split(":") + [None, None])[:3]
    try:
        from datasets import load_dataset

        data = load_dataset(name, config or None, split=split or "train")
    except Exception as exc:  # offline, unknown id, bad config: one actionable line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise HubError(
            f"could not load calibration dataset {source!r} ({first}); offline? use --calibration self or a local file"
        ) from None
    column = text_column or ("text" if "text" in data.column_names else None)
    if column is None or column not in data.column_names:
        raise ConfigError(f"dataset {source!r} has no column {text_column or 'text'!r}; give --text-column (columns: {', '.join(data.column_names)})")
    return [t for t in data[column] if t and t.strip()]


def _windows(docs: list[str], tokenizer, samples: int, seq_len: int, seed: int, source: str) -> torch.Tensor:
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise ConfigError(f"calibration source {source!r} has no text")
    needed = samples * seq_len
    rng = torch.Generator().manual_seed(seed)
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for i in torch.randperm(len(docs), generator=rng).tolist():
        stream.extend(_encode(tokenizer, docs[i]))
        if eos is not None:
            stream.append(eos)
        if len(stream) >= 2 * needed:  # enough to choose from; large datasets are not tokenized whole
            break
    count = len(stream) // seq_len
    if count < samples:
        raise ConfigError(
            f"calibration source {source!r} has {len(stream)} tokens: not enough for {samples} x {seq_len}; "
            "lower --calibration-samples or --seq-len"
        )
    picks = sorted(torch.randperm(count, generator=rng)[:samples].tolist())
    ids = torch.tensor(stream[: count * seq_len], dtype=torch.long).view(count, seq_len)
    return ids[picks].clone()


def _encode(tokenizer, text: str) -> Iterable[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


SOURCES.register(CalibrationSource("self", "text sampled from the model itself (data-free)", lambda source: source == SELF))
SOURCES.register(CalibrationSource("files", ".txt/.raw/.tokens files (one document each), .jsonl, .parquet; globs and "
                                   "comma-separated lists", _is_files, _local_documents))
SOURCES.register(CalibrationSource("hub", "a Hub dataset id[:config[:split]] read with datasets", lambda source: True,
                                   _hub_documents))
