"""Perplexity of a causal LM on a text corpus, the standard WikiText-2 recipe.

Recipe (the Hugging Face "perplexity of fixed-length models" one, used by GPTQ/SparseGPT/SLEB-style papers):

1. Rows: for WikiText, the rows of the ``test`` split (every line of ``wiki.test.raw`` keeps its trailing newline;
   blank lines are ``""``), joined with ``"\\n\\n"``. Local ``.txt``/``.raw`` files are read into rows the same way;
   ``.jsonl`` files give one row per record (its ``text`` field, else ``page``, else its only string field).
2. The joined text is tokenized once, as one stream (one BOS at the start when the tokenizer adds one).
3. The stream is cut into windows of ``seq_len`` tokens that start every ``stride`` tokens (default ``stride ==
   seq_len``: non-overlapping windows). Within a window every token after the first is predicted from the tokens
   before it *in the same window*; with overlapping windows only the tokens not scored by an earlier window count.
   A trailing partial window is scored too.
4. perplexity = exp(sum of token NLLs / number of scored tokens), in float64.

The context length matters (perplexity at 128 tokens is much higher than at 2048), so the result always states
``seq_len`` and ``stride``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from hf_layerprune.runtime.errors import ConfigError, HubError

WIKITEXT = "wikitext"
WIKITEXT_HUB = ("wikitext", "wikitext-2-raw-v1", "test")  # datasets.load_dataset(path, name, split=...)
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".md")


def wikitext_rows(text: str) -> list[str]:
    """Rows as the Hub ``wikitext`` dataset gives them: every line with its newline, blank lines as ""."""
    return [line if line.strip() else "" for line in io.StringIO(text)]


def _jsonl_rows(path: Path) -> list[str]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{path}:{n} is not valid JSON") from None
            if isinstance(record, str):
                rows.append(record)
                continue
            for key in ("text", "page", "content"):
                if isinstance(record.get(key), str):
                    rows.append(record[key])
                    break
            else:
                strings = [v for v in record.values() if isinstance(v, str)]
                if len(strings) != 1:
                    raise ConfigError(f"{path}:{n} has no 'text' field; give one text field per JSON line")
                rows.append(strings[0])
    return rows


def load_text_rows(source: str) -> tuple[list[str], str]:
    """(rows, normalized source name) for ``wikitext``, a Hub dataset ``id:config:split``, or a local file.

    Cached per process (a file is re-read when its modification time changes)."""
    path = Path(os.path.expanduser(source))
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    rows, name = _load_text_rows(source, stamp)
    return list(rows), name


@functools.lru_cache(maxsize=4)
def _load_text_rows(source: str, _stamp: int | None) -> tuple[tuple[str, ...], str]:
    rows, name = _read_text_rows(source)
    return tuple(rows), name


def _read_text_rows(source: str) -> tuple[list[str], str]:
    path = Path(os.path.expanduser(source))
    if path.is_file():
        try:
            if path.suffix == ".jsonl":
                return _jsonl_rows(path), str(path.resolve())
            if path.suffix in TEXT_SUFFIXES or not path.suffix:
                return wikitext_rows(path.read_text(encoding="utf-8")), str(path.resolve())
        except UnicodeDecodeError as exc:
            raise ConfigError(f"perplexity text {source} is not UTF-8 (byte {exc.start})") from None
        raise ConfigError(f"perplexity text {source}: use a .txt, .raw or .jsonl file")
    if path.suffix in TEXT_SUFFIXES + (".jsonl",) or os.sep in source and not _looks_like_hub(source):
        raise ConfigError(f"perplexity text file not found: {source}")
    if source == WIKITEXT:
        name, config, split = WIKITEXT_HUB
    else:
        name, config, split = (source.split(":") + [None, None])[:3]
        split = split or "test"
    return _hub_rows(name, config, split, source), f"{name}:{config}:{split}" if config else f"{name}::{split}"


def _looks_like_hub(source: str) -> bool:
    head = source.split(":")[0]
    return head.count("/") == 1 and not head.startswith((".", "/", "~"))


def _hub_rows(name: str, config: str | None, split: str, given: str) -> list[str]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("perplexity on a Hub dataset needs the `datasets` package") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as exc:
        offline = datasets.config.HF_HUB_OFFLINE
        why = "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)" if offline else type(exc).__name__
        raise HubError(
            f"cannot load the perplexity text {given!r} from the Hub ({why}); give a local file instead, e.g. "
            "--perplexity /path/to/wikitext-2-raw/wiki.test.raw (see docs/evaluation.md)"
        ) from None
    column = "text" if "text" in ds.column_names else next(
        (c for c in ds.column_names if ds.features[c].dtype == "string"), None
    )
    if column is None:
        raise ConfigError(f"dataset {given!r} has no text column")
    return list(ds[column])


def tokenize_stream(tokenizer, rows: Iterable[str], max_tokens: int | None = None):
    """One 1-D LongTensor of token ids for ``"\\n\\n".join(rows)``."""
    import torch

    text = "\n\n".join(rows)
    if not text.strip():
        raise ConfigError("the perplexity text is empty")
    verbose = getattr(tokenizer, "verbose", None)
    try:
        if verbose is not None:
            tokenizer.verbose = False  # silence "sequence length is longer than the maximum"
        ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    finally:
        if verbose is not None:
            tokenizer.verbose = verbose
    ids = torch.tensor(ids, dtype=torch.long)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    return ids


def windows(num_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """[(begin, end, first_scored)]: input ids[begin:end]; targets at positions >= first_scored (absolute)."""
    out = []
    prev_end = 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + seq_len, num_tokens)
        first = max(prev_end, begin + 1)  # the first token of a window has no context inside it
        if end - first > 0:
            out.append((begin, end, first))
        prev_end = end
        if end == num_tokens:
            break
    return out


def perplexity(
    model,
    tokenizer,
    text_source: str = WIKITEXT,
    *,
    seq_len: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    rows: list[str] | None = None,
) -> dict[str, Any]:
    """Perplexity of ``model`` on ``text_source`` (``wikitext``, ``id:config:split`` or a local .txt/.raw/.jsonl).

    Returns {"perplexity", "nll" (mean, nats/token), "tokens" (scored), "tokens_total" (in the stream),
    "windows", "seq_len", "stride", "source", "max_tokens"}. ``rows`` short-circuits loading (tests, reuse).
    """
    import torch

    if seq_len < 2:
        raise ConfigError("--seq-len must be at least 2")
    stride = int(stride or seq_len)
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"stride must be between 1 and seq_len ({seq_len}); got {stride}")
    if rows is None:
        rows, source = load_text_rows(text_source)
    else:
        source = text_source
    ids = tokenize_stream(tokenizer, rows, max_tokens)
    if ids.numel() < 2:
        raise ConfigError("the perplexity text has fewer than 2 tokens")
    device = next(model.parameters()).device
    batch_size = logits_rows(model, seq_len, batch_size)
    spans = windows(ids.numel(), seq_len, stride)
    total_nll = 0.0
    total_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # windows of equal length are batched; the trailing partial one runs alone
            groups: list[list[tuple[int, int, int]]] = []
            for span in spans:
                if groups and len(groups[-1]) < batch_size and _width(groups[-1][0]) == _width(span):
                    groups[-1].append(span)
                else:
                    groups.append([span])
            for group in groups:
                batch = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
                logits = model(input_ids=batch, use_cache=False).logits
                nll = target_nll(logits[:, :-1], batch[:, 1:])  # [B, T-1]; nll[:, j] scores pos j+1
                for row, (b, _end, first) in enumerate(group):
                    scored = nll[row, first - b - 1 :]
                    total_nll += float(scored.double().sum())
                    total_tokens += scored.numel()
    finally:
        model.train(was_training)
    mean = total_nll / total_tokens
    return {
        "perplexity": math.exp(mean),
        "nll": mean,
        "tokens": total_tokens,
        "tokens_total": int(ids.numel()),
        "windows": len(spans),
        "seq_len": seq_len,
        "stride": stride,
        "max_tokens": max_tokens,
        "source": source,
    }


NLL_CHUNK = 128  # positions per step of target_nll
LOGITS_BUDGET = 256 * 2**20  # bytes of float32 logits one perplexity batch may produce


def logits_rows(model, seq_len: int, wanted: int) -> int:
    """Windows per batch: at most `wanted`, and few enough that their logits (rows x seq_len x vocabulary, float32)
    fit LOGITS_BUDGET, one row at least: a 49k vocabulary makes 0.1 GB of logits per 512-token window, more than a
    135M model's activations. The perplexity does not depend on the batching."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else getattr(model.config, "vocab_size", 1)
    return max(1, min(wanted, LOGITS_BUDGET // max(1, seq_len * vocab * 4)))


def target_nll(logits, targets):
    """-log softmax(logits)[target] per position ([B, T, vocab], [B, T] -> [B, T], float32), as logsumexp minus the
    target's logit over NLL_CHUNK positions at a time: no second [B, T, vocab] tensor (0.4 GB for 4 x 512 x 49k)."""
    import torch

    out = []
    for chunk, want in zip(logits.split(NLL_CHUNK, dim=1), targets.split(NLL_CHUNK, dim=1)):
        chunk = chunk.float()
        out.append(chunk.logsumexp(-1) - chunk.gather(-1, want.unsqueeze(-1)).squeeze(-1))
    return torch.cat(out, dim=1)


def _width(span: tuple[int, int, int]) -> int:
    return span[1] - span[0]
