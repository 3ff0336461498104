"""Calibration sources: local files, `self` (data-free), Hub ids offline; deterministic with the seed."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_layerprune.runtime.calibration import calibration_batches, calibration_record, source_kind
from hf_layerprune.runtime.errors import LayerPruneError
from tiny_models import VOCAB, tiny_model

torch.set_num_threads(1)

TEXT = " ".join(f"Sentence number {i} talks about topic {i % 7} and ends here." for i in range(200))
CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}"


def char_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A real (fast) character-level tokenizer over printable ASCII that fits the tiny models' 128 ids."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def stream_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def is_window_of(row: list[int], stream: list[int]) -> bool:
    n = len(row)
    return any(stream[i : i + n] == row for i in range(0, len(stream) - n + 1))


def test_local_txt_windows_are_deterministic_and_cut_from_the_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    tok = char_tokenizer()
    a = calibration_batches(str(path), tok, samples=6, seq_len=40, seed=0)
    assert a.shape == (6, 40) and a.dtype == torch.long
    assert torch.equal(a, calibration_batches(str(path), tok, samples=6, seq_len=40, seed=0))
    assert not torch.equal(a, calibration_batches(str(path), tok, samples=6, seq_len=40, seed=1))
    stream = stream_of(tok, TEXT)
    rows = a.tolist()
    assert all(is_window_of(row, stream) for row in rows)
    for row in rows:  # each row is one of the non-overlapping windows [40k, 40k + 40)
        assert any(stream[k : k + 40] == row for k in range(0, len(stream) - 39, 40))
    assert len(set(map(tuple, rows))) == 6
    record = calibration_record(str(path), tok, samples=6, seq_len=40, seed=0, batches=a)
    assert record["kind"] == "files" and record["files"] == [str(path)] and record["tokens"] == 240
    assert len(record["fingerprint"]) == 16


def test_jsonl_documents_are_joined_with_eos(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = [f"Doc {i} says hello." for i in range(80)]
    path.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)) + "\n")
    tok = char_tokenizer()
    ids = calibration_batches(str(path), tok, samples=4, seq_len=64, seed=2, text_column="body")
    assert ids.shape == (4, 64)
    assert torch.equal(ids, calibration_batches(str(path), tok, samples=4, seq_len=64, seed=2, text_column="body"))
    flat = ids.flatten().tolist()
    assert tok.eos_token_id in flat  # documents (~18 tokens) are separated by EOS inside the windows
    inner = [p for row in ids.tolist() for p in tok.decode(row).split("</s>")[1:-1]]  # whole documents
    assert inner and all(p in docs for p in inner)
    # without --text-column: `text` if present, else the first string column
    assert torch.equal(calibration_batches(str(path), tok, samples=4, seq_len=64, seed=2), ids)
    with pytest.raises(LayerPruneError, match="has no text column 'title'; give --text-column"):
        calibration_batches(str(path), tok, samples=1, seq_len=8, text_column="title")


def test_parquet_and_globs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = char_tokenizer()
    pq.write_table(pa.table({"text": [TEXT[:2000], TEXT[2000:4000]]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text(TEXT[4000:6000])
    (tmp_path / "c.txt").write_text(TEXT[6000:8000])
    assert calibration_batches(str(tmp_path / "a.parquet"), tok, samples=3, seq_len=50).shape == (3, 50)
    both = calibration_batches(str(tmp_path / "*.txt"), tok, samples=40, seq_len=50, seed=5)
    assert both.shape == (40, 50)  # 40 windows need both files (about 2000 tokens each)
    assert calibration_record(str(tmp_path / "*.txt"), samples=1, seq_len=1)["files"] == [
        str(tmp_path / "b.txt"), str(tmp_path / "c.txt")]
    assert source_kind(str(tmp_path / "*.txt")) == "files" and source_kind("wikitext:wikitext-2-raw-v1:train") == "hub"


def test_self_calibration_without_tokenizer_is_seeded_and_starts_at_bos():
    model = tiny_model("llama", 2)
    a = calibration_batches("self", None, model=model, samples=5, seq_len=24, seed=7)
    b = calibration_batches("self", None, model=model, samples=5, seq_len=24, seed=7)
    c = calibration_batches("self", None, model=model, samples=5, seq_len=24, seed=8)
    assert a.shape == (5, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert a[:, 0].tolist() == [model.config.bos_token_id] * 5  # every window starts where text starts
    assert len(set(map(tuple, a.tolist()))) == 5
    state = torch.random.get_rng_state()
    calibration_batches("self", None, model=model, samples=2, seq_len=8, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    record = calibration_record("self", None, model=model, samples=5, seq_len=24, seed=7, batches=a)
    assert record["sampling"]["prompt"] == "bos-token-ids (no tokenizer)" and record["kind"] == "self"


def test_self_samples_are_reused_only_for_the_same_weights():
    import copy

    from hf_layerprune.runtime import calibration

    model = tiny_model("llama", 2)
    calibration._SELF_MEMO.clear()
    fresh = calibration_batches("self", None, model=model, samples=3, seq_len=20, seed=1)
    twin = copy.deepcopy(model)  # the pipeline's unpruned copy: same values, another object
    assert calibration._SELF_MEMO and torch.equal(calibration_batches("self", None, model=twin, samples=3, seq_len=20, seed=1), fresh)
    calibration._SELF_MEMO.clear()
    assert torch.equal(calibration_batches("self", None, model=twin, samples=3, seq_len=20, seed=1), fresh)  # memo = regeneration
    with torch.no_grad():
        twin.model.norm.weight.mul_(30.0)  # sharper logits: other samples
    assert calibration.weights_fingerprint(twin) != calibration.weights_fingerprint(model)
    assert not torch.equal(calibration_batches("self", None, model=twin, samples=3, seq_len=20, seed=1), fresh)


def test_self_calibration_of_an_instruct_model_starts_from_the_assistant_turn():
    model = tiny_model("llama", 2)
    tok = char_tokenizer(CHAT)
    ids = calibration_batches("self", tok, model=model, samples=4, seq_len=160, seed=0)
    assert ids.shape == (4, 160)
    for row in ids.tolist():
        text = tok.decode(row)
        assert text.startswith("<s>user: ") and "</s><s>assistant: " in text
    assert len({tok.decode(row).split("</s>")[0] for row in ids.tolist()}) > 1  # requests vary with the seed
    assert calibration_record("self", tok, samples=4, seq_len=160)["sampling"]["prompt"] == "chat-template"
    base = calibration_batches("self", char_tokenizer(), model=model, samples=2, seq_len=16, seed=0)
    assert base[:, 0].tolist() == [1, 1]


def test_errors_are_one_line(tmp_path, monkeypatch):
    tok = char_tokenizer()
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    cases = [
        (lambda: calibration_batches(str(short), tok, samples=2, seq_len=8), "not enough for 2 x 8"),
        (lambda: calibration_batches(str(tmp_path / "missing.txt"), tok), "calibration file not found"),
        (lambda: calibration_batches(str(tmp_path / "*.jsonl"), tok), "matches no files"),
        (lambda: calibration_batches(str(short), None), "needs a tokenizer"),
        (lambda: calibration_batches("self", None), "no model was given"),
        (lambda: calibration_batches("self", None, model=tiny_model("llama", 1), seq_len=1), "seq_len >= 2"),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cases.append((lambda: calibration_batches("no-such-org/no-such-data:cfg:train", tok), "offline\\? use --calibration self"))
    for call, message in cases:
        with pytest.raises(LayerPruneError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
