"""Generation fidelity (evaluation/fidelity.py) on a tiny random Llama with a byte-level tokenizer, checked against an
independent computation: the pruned model's logits come from the unpruned model with the removed layer bypassed by a
hook (not from surgery.py), KL from ``torch.nn.functional.kl_div``, and the last-word targets from the text itself.
Tolerance: atol 1e-5 on per-document means of float32 log-probabilities (KL, NLL), exact for counts (top-1, greedy).
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from hf_layerprune.evaluation import EvalSettings, evaluate_pair
from hf_layerprune.evaluation.fidelity import (
    documents,
    generation_fidelity,
    last_word_targets,
    logprobs,
    prepare,
    retentions,
    score_document,
    summarize,
)
from hf_layerprune.evaluation.perplexity import wikitext_rows
from hf_layerprune.surgery.layers import remove_layers
from test_evaluation import one_thread, tiny_llama, tiny_tokenizer  # noqa: F401  (one_thread: autouse fixture)

ATOL = 1e-5
WORDS = ["river", "stone", "castle", "king", "harbour", "music", "winter", "garden"]


def cut_pair(num_layers: int, removed: int):
    """A tiny random Llama and a copy of it with one layer removed."""
    base = tiny_llama(num_layers=num_layers)
    pruned = copy.deepcopy(base)
    remove_layers(pruned, [removed])
    return base, pruned


def article(title: str, seed: int, sentences: int = 24) -> str:
    rng = random.Random(seed)
    lines = [f" = {title} = \n", "\n"]
    for p in range(3):
        body = " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) + " ." for _ in range(sentences // 3))
        lines += [f" {body} \n", "\n"]
        if p == 0:
            lines += [" = = Section = = \n", "\n"]
    return "".join(lines)


@pytest.fixture(scope="module")
def rows():
    return wikitext_rows("\n" + article("Alpha", 1) + article("Beta", 2) + article("Gamma", 3))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_documents_split_at_top_level_headings_and_targets_are_repeated_sentence_ends(rows):
    docs = documents(rows)
    assert [d.splitlines()[0] for d in docs] == [" = Alpha = ", " = Beta = ", " = Gamma = "]
    assert " = = Section = = " in docs[0]  # a section heading does not start a document
    text = docs[0]
    spans = last_word_targets(text)
    assert spans
    for start, end in spans:
        word = text[start:end]
        assert word in WORDS and text[end:].lstrip(" ").startswith((".", "\n"))  # the word ends a sentence
        assert f" {word} " in text[:start]  # ... and already occurred earlier in the document
    every_end = [m for m in range(len(text)) if text.startswith(" .", m)]
    assert len(spans) <= len(every_end)
    assert documents(["one row\n", "", "another row\n"]) == ["one row\n", "another row\n"]  # no headings: per row


def test_measures_match_an_independent_computation(rows, tok):
    base, pruned = cut_pair(4, 2)
    out = generation_fidelity(base, pruned, tok, rows, source="tiny", docs=3, seq_len=400, log=lambda m: None)
    assert out["settings"]["docs"] == 3 and len(out["per_doc"]) == 3

    def bypass_layer_2(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    for rec, text in zip(out["per_doc"], documents(rows)):
        ids = tok(text)["input_ids"][:400]
        x = torch.tensor([ids])
        with torch.no_grad():
            b = base(x, use_cache=False).logits[0, :-1].double().log_softmax(-1)
            handle = base.model.layers[2].register_forward_hook(bypass_layer_2, with_kwargs=True)
            try:
                p = base(x, use_cache=False).logits[0, :-1].double().log_softmax(-1)
            finally:
                handle.remove()
        nxt = torch.tensor(ids[1:])
        kl = F.kl_div(p, b, log_target=True, reduction="none").sum(-1)  # KL(base || pruned) per position
        assert rec["tokens"] == len(ids) - 1
        assert rec["kl"] == pytest.approx(float(kl.mean()), abs=ATOL) and rec["kl"] > 0
        assert rec["top1"] == float((b.argmax(-1) == p.argmax(-1)).double().mean())
        assert rec["nll_base"] == pytest.approx(float(F.nll_loss(b, nxt)), abs=ATOL)
        assert rec["nll_pruned"] == pytest.approx(float(F.nll_loss(p, nxt)), abs=ATOL)
        spans = [(s, e) for s, e in last_word_targets(text) if 128 <= s and e <= len(ids)]  # 1 byte = 1 token here
        assert [(t["word"], t["position"]) for t in rec["targets"]] == [(text[s:e], s) for s, e in spans]
        for t in rec["targets"]:
            pos = range(t["position"], t["position"] + len(t["word"]))
            assert t["base"] == int(all(int(b[i - 1].argmax()) == ids[i] for i in pos))
            assert t["pruned"] == int(all(int(p[i - 1].argmax()) == ids[i] for i in pos))
            assert t["logprob_pruned"] == pytest.approx(sum(float(p[i - 1, ids[i]]) for i in pos), abs=ATOL)
    assert all(rec["targets"] for rec in out["per_doc"])
    s = out["summary"]
    kls = [d["kl"] for d in out["per_doc"]]
    assert s["kl"] == pytest.approx(sum(kls) / 3) and s["kl_se"] == pytest.approx(float(torch.tensor(kls).std() / 3**0.5))
    assert s["last_word"]["targets"] == sum(len(d["targets"]) for d in out["per_doc"])


def test_a_model_against_itself_agrees_everywhere(rows, tok):
    base = tiny_llama(num_layers=3)
    out = generation_fidelity(base, copy.deepcopy(base), tok, rows, source="tiny", docs=2, seq_len=300, log=lambda m: None)
    s = out["summary"]
    assert s["top1"] == 1.0 and s["kl"] == pytest.approx(0.0, abs=ATOL) and s["nll_delta"] == pytest.approx(0.0, abs=ATOL)
    from hf_layerprune.evaluation.fidelity import DEFAULT_SEQ_LEN
    from hf_layerprune.flow.memory import FIDELITY_TOKENS

    assert FIDELITY_TOKENS == DEFAULT_SEQ_LEN  # the memory estimate plans for the default window


def test_last_word_retention_is_paired_over_targets():
    """Synthetic log-probabilities: the base predicts every target, the pruned model the first of each two."""
    vocab, ids = 5, [0, 1, 2, 3, 4, 1, 2, 3]
    base_lp = torch.full((len(ids) - 1, vocab), -10.0)
    for j, t in enumerate(ids[1:]):
        base_lp[j, t] = 0.0
    pruned_lp = base_lp.clone()
    pruned_lp[5, 2], pruned_lp[5, 0] = -10.0, 0.0  # position 6 (token 2) now predicted wrong
    targets = [("a", 1, 3), ("b", 5, 7), ("c", 7, 8)]  # "b" spans positions 5-6
    rec = score_document(base_lp.log_softmax(-1), pruned_lp.log_softmax(-1), ids, targets)
    assert [(t["base"], t["pruned"]) for t in rec["targets"]] == [(1, 1), (1, 0), (1, 1)]
    assert rec["top1"] == pytest.approx(6 / 7)
    s = summarize([{**rec, "doc": 0}])
    lw = s["last_word"]
    assert lw["base"] == 1.0 and lw["pruned"] == pytest.approx(2 / 3) and lw["retention_pct"] == pytest.approx(200 / 3)
    diffs = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    assert lw["delta_se"] == pytest.approx(float(diffs.std() / 3**0.5))
    assert lw["retention_se_pts"] == pytest.approx(100 * lw["delta_se"])
    r = retentions({"settings": {"seq_len": 8}, "summary": s})
    assert r["last_word_retention"] == pytest.approx(200 / 3) and r["top1"] == pytest.approx(6 / 7)


def test_evaluate_pair_stores_the_section_and_documents_too_short_are_skipped(rows, tok, tmp_path):
    path = tmp_path / "held_out.raw"
    path.write_text("".join(rows), encoding="utf-8")
    base, pruned = cut_pair(3, 1)
    settings = EvalSettings(tasks=[], perplexity=None, speed=False, generation=str(path), generation_docs=2,
                            generation_seq_len=4096)
    section = evaluate_pair(base, pruned, tok, settings, log=lambda m: None)
    gen = section["generation"]
    assert gen["settings"]["seq_len"] == 512  # capped at the model's max_position_embeddings
    assert gen["summary"]["docs"] == 2 and gen["summary"]["kl"] > 0
    assert section["settings"]["generation_docs"] == 2
    assert len(prepare(tok, rows, docs=3, seq_len=4096)) == 3
    short = tmp_path / "short.raw"
    short.write_text(" = A = \n\n too short . \n", encoding="utf-8")
    section = evaluate_pair(base, pruned, tok, EvalSettings(tasks=[], perplexity=None, speed=False, generation=str(short)),
                            log=lambda m: None)
    assert "generation" not in section


def test_card_headline_section_limits_and_summary_give_both_retentions(rows, tok, tmp_path):
    import json

    from hf_layerprune.flow.finish import rerender
    from hf_layerprune.report import write_report
    from hf_layerprune.card.summary import quality_line

    base, pruned = cut_pair(4, 2)
    gen = generation_fidelity(base, pruned, tok, rows, source="/data/wikitext2_raw/wiki.test.raw", docs=3, seq_len=400,
                              log=lambda m: None)
    paired = {"z": 2.0, "tasks": {}, "headline": {"tasks": ["arc"], "excluded": {}, "base": 0.5, "pruned": 0.45,
                                                   "delta": -0.05, "delta_se": 0.01, "retention_pct": 90.0,
                                                   "retention_se_pts": 2.0, "measurable": True}}
    report = {"format_version": 1, "base_model": "acme/tiny-llama", "model_type": "llama", "granularity": "block",
              "num_layers_before": 4, "num_layers_after": 3, "removed_layers": [2], "kept_layers": [0, 1, 3],
              "evaluation": {"settings": {"tasks": ["arc"]}, "base": {"arc": {"acc": {"value": 0.5}}},
                             "pruned": {"arc": {"acc": {"value": 0.45}}}, "paired": paired, "generation": gen},
              "base_card": {"license": "mit", "source": "test"}}
    out = tmp_path / "out"
    out.mkdir()
    write_report(out, json.loads(json.dumps(report)))
    text = rerender(out, online=False).read_text(encoding="utf-8")
    s = gen["summary"]
    top1 = f"{100 * s['top1']:.1f}% ± {100 * s['top1_se']:.1f}"
    if s["last_word"]["base"] == 0:  # a random model never guesses a word: no retention to state
        assert "predicting the last word" not in text
    s["last_word"] = {**s["last_word"], "base": 0.6, "pruned": 0.3, "delta": -0.3, "delta_se": 0.05,
                      "retention_pct": 50.0, "retention_se_pts": 8.3, "word_perplexity_base": 7.0,
                      "word_perplexity_pruned": 90.0}
    write_report(out, json.loads(json.dumps(report)))
    text = rerender(out, online=False).read_text(encoding="utf-8")
    kept = "50.0% ± 8.3"
    assert f"its most likely next token is the base model's **{top1}** of the time" in text
    assert f"it keeps **{kept}** of the base model's accuracy at predicting the last word" in text
    assert "### Generation fidelity" in text and f"{s['kl']:.3f} ± {s['kl_se']:.3f}" in text
    assert "WikiText-2 (raw, test)" in text and "3.7% of its GSM8K score" in text and "2510.22228" in text
    line = quality_line(report)
    assert "90.0% of the base accuracy ± 2.0" in line or "90.0% of the base accuracy" in line
    assert f"generation: {kept} of the base last-word accuracy, top-1 agreement {100 * s['top1']:.1f}%" in line

    del report["evaluation"]["generation"]  # an old report: no generation sentence, section or limit
    write_report(out, json.loads(json.dumps(report)))
    text = rerender(out, online=False).read_text(encoding="utf-8")
    assert "Generation fidelity" not in text and "GSM8K" not in text and "generation:" not in quality_line(report)


def test_evaluate_cli_with_a_base_measures_generation_fidelity(rows, tok, tmp_path):
    import json

    from typer.testing import CliRunner

    from hf_layerprune.cli import app

    held = tmp_path / "held_out.raw"
    held.write_text("".join(rows), encoding="utf-8")
    base, pruned = cut_pair(3, 1)
    for name, model in (("base", base), ("pruned", pruned)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    args = ["evaluate", str(tmp_path / "pruned"), "--base", str(tmp_path / "base"), "--tasks", "none", "--no-speed",
            "--perplexity", str(held), "--json", str(tmp_path / "e.json")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    gen = json.loads((tmp_path / "e.json").read_text())["generation"]
    assert f"{gen['summary']['top1']:.4f}" in result.output and "KL(base‖pruned)" in result.output
    direct = generation_fidelity(base, pruned, tok, rows, source="x", log=lambda m: None, seq_len=512)
    assert gen["summary"]["docs"] == 3 and gen["summary"]["kl"] == pytest.approx(direct["summary"]["kl"], abs=ATOL)
    result = CliRunner().invoke(app, args[:-2] + ["--no-generation", "--json", str(tmp_path / "f.json")])
    assert result.exit_code == 0 and "generation" not in json.loads((tmp_path / "f.json").read_text())


def test_kl_to_base_of_autos_judge_matches_the_fidelity_measure(rows, tok):
    """`auto` judges candidates by healing.training.kl_to_base; on the same ids it is the token-weighted mean of the
    fidelity measure's per-position KL (one document here, so the two means coincide)."""
    from hf_layerprune.healing.training import kl_to_base

    base, pruned = cut_pair(4, 2)
    ids = torch.tensor([tok(documents(rows)[0])["input_ids"][:300]])
    out = generation_fidelity(base, pruned, tok, rows, source="x", docs=1, seq_len=300, log=lambda m: None)
    positions = out["per_doc"][0]["tokens"]  # the last position predicts nothing in the fidelity measure
    with torch.no_grad():
        b = base(ids, use_cache=False).logits[0, -1].double().log_softmax(-1)
        p = pruned(ids, use_cache=False).logits[0, -1].double().log_softmax(-1)
    last = float(F.kl_div(p, b, log_target=True, reduction="sum"))
    assert kl_to_base(pruned, base, ids) == pytest.approx((out["per_doc"][0]["kl"] * positions + last) / (positions + 1),
                                                          abs=ATOL)


def test_the_pipelines_evaluation_measures_it_on_the_perplexity_text_or_says_why_not(rows, tok, tmp_path):
    from hf_layerprune.evaluation import evaluate_for_recipe
    from hf_layerprune.recipe import Recipe

    path = tmp_path / "held_out.raw"
    path.write_text("".join(rows), encoding="utf-8")
    base, pruned = cut_pair(3, 1)
    recipe = Recipe(model="x", layers=[1], tasks=[], perplexity=str(path))
    section = evaluate_for_recipe(base, pruned, tok, recipe, log=lambda m: None)
    assert section["generation"]["summary"]["docs"] == 3 and section["settings"]["generation"] == str(path)
    assert "generation_skipped" not in section
    short = tmp_path / "short.raw"
    short.write_text(" = A = \n\n too short . \n", encoding="utf-8")
    section = evaluate_for_recipe(base, pruned, tok, Recipe(model="x", layers=[1], tasks=[], perplexity=str(short)),
                                  log=lambda m: None)
    assert "generation" not in section and "long enough" in section["generation_skipped"]


@pytest.mark.parametrize("keep", [True, False])
def test_the_long_range_judge_scores_the_fidelity_measures_last_words(rows, tok, monkeypatch, keep):
    """flow/judge.py's last-word NLL and accuracy (LM head on the target rows only, or on every row for a model
    without ``logits_to_keep``) equal what the fidelity measure computes from full log-probabilities per target."""
    from hf_layerprune.flow import judge

    monkeypatch.setattr(judge, "_keeps_logits", lambda model: keep)
    base, pruned = cut_pair(4, 2)
    docs = [d for d in prepare(tok, rows, docs=3, seq_len=400) if d["targets"]]
    assert sum(len(d["targets"]) for d in docs) >= 5
    got = judge.last_word_scores(pruned, docs)
    scored = [t for d in docs for t in score_document(logprobs(base, d["ids"]), logprobs(pruned, d["ids"]), d["ids"],
                                                        d["targets"])["targets"]]
    assert got["last_word_targets"] == len(scored)
    assert got["last_word_nll"] == pytest.approx(-sum(t["logprob_pruned"] for t in scored) / len(scored), abs=ATOL)
    assert got["last_word_accuracy"] == sum(t["pruned"] for t in scored) / len(scored)
