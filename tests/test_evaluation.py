"""Evaluation stage on a tiny random Llama with a real (byte-level BPE) tokenizer, fully offline.

lm-eval runs on `tiny_mc`, a 10-row multiple-choice task from tests/data written as a YAML at test time (absolute
path); perplexity is checked against a direct computation; speed against the config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hf_layerprune.runtime.errors import LayerPruneError
from hf_layerprune.evaluation import (
    EvalSettings,
    compare,
    evaluate_pair,
    kv_cache_bytes_per_token,
    measure_speed,
    perplexity,
    resolve_tasks,
    run_lm_eval,
)
from hf_layerprune.evaluation import lm_eval_runner
from hf_layerprune.evaluation.perplexity import load_text_rows, wikitext_rows, windows

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]

TINY_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
metadata:
  version: 1.0
"""

TEXT = (
    " = Tiny Article = \n\n The quick brown fox jumps over the lazy dog . It was a sunny day in the park , and the"
    " children were playing football near the old oak tree . \n\n = = History = = \n\n The park opened in 1901 and"
    " has been a favourite place for families ever since . \n"
)


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls are 100x slower with 2 OpenMP threads on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_tokenizer():
    """A real byte-level BPE tokenizer (259 tokens, no merges): any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def tiny_llama(num_layers: int = 4, seed: int = 0, vocab_size: int = 259):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    (d / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    return d


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.raw"
    path.write_text(TEXT, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- lm-eval
def test_lm_eval_offline_tiny_task_and_cache(model, tok, tasks_dir, tmp_path, monkeypatch):
    import datasets

    offline_before = datasets.config.HF_HUB_OFFLINE
    out = run_lm_eval(model, tok, ["tiny_mc"], include_path=tasks_dir, cache_dir=tmp_path / "cache", batch_size=4)
    assert datasets.config.HF_HUB_OFFLINE == offline_before  # the offline switch is scoped to the run
    acc = out["results"]["tiny_mc"]["acc"]
    assert 0.0 <= acc["value"] <= 1.0 and acc["stderr"] is not None and acc["stderr"] >= 0
    assert acc["n_shot"] == 0 and acc["limit"] is None and acc["samples"] == 10 and acc["samples_total"] == 10
    assert acc["version"] == 1.0 and acc["higher_is_better"] is True
    assert set(out["results"]["tiny_mc"]) == {"acc", "acc_norm"}
    assert out["settings"]["tasks"] == ["tiny_mc"] and out["settings"]["lm_eval_version"]
    assert out["cached"] == []
    # per-doc scores for pairing: every doc once, the gold index and the number of choices from the data
    docs = out["samples"]["tiny_mc"]
    rows = [json.loads(line) for line in (DATA / "tiny_mc.jsonl").read_text().splitlines() if line.strip()]
    assert docs["doc_id"] == list(range(10))
    assert docs["target"] == [r["label"] for r in rows] and docs["choices"] == [len(r["choices"]) for r in rows]
    assert sum(docs["acc"]) / 10 == pytest.approx(acc["value"]) and set(docs["acc_norm"]) <= {0.0, 1.0}

    # same model, task and settings: served from the disk cache without running lm-eval
    def boom(*a, **k):
        raise AssertionError("lm-eval should not run")

    monkeypatch.setattr(lm_eval_runner, "_simple_evaluate", boom)
    again = run_lm_eval(model, tok, ["tiny_mc"], include_path=tasks_dir, cache_dir=tmp_path / "cache", batch_size=4)
    assert again["cached"] == ["tiny_mc"] and again["results"] == out["results"] and again["samples"] == out["samples"]
    # other settings or other weights miss the cache
    with pytest.raises(AssertionError):
        run_lm_eval(model, tok, ["tiny_mc"], include_path=tasks_dir, cache_dir=tmp_path / "cache", limit=5)
    other = tiny_llama(seed=1)
    with pytest.raises(AssertionError):
        run_lm_eval(other, tok, ["tiny_mc"], include_path=tasks_dir, cache_dir=tmp_path / "cache", batch_size=4)


def test_lm_eval_limit_is_recorded(model, tok, tasks_dir):
    out = run_lm_eval(model, tok, "tiny_mc", include_path=tasks_dir, limit=4, use_cache=False)
    rec = out["results"]["tiny_mc"]["acc"]
    assert rec["limit"] == 4 and rec["samples"] == 4 and rec["samples_total"] == 10


def test_unknown_task_is_a_clear_error(tasks_dir):
    # the include dir alone is indexed when it has every task; an unknown name falls back to lm-eval's full index
    with pytest.raises(LayerPruneError, match="tiny_mx.*did you mean tiny_mc"):
        lm_eval_runner.task_manager(tasks_dir, ["tiny_mx"])


def test_resolve_tasks_presets():
    assert resolve_tasks(None) == list(lm_eval_runner.DEFAULT_TASKS)
    assert resolve_tasks("default+mmlu")[-1] == "mmlu"
    assert resolve_tasks("local") == ["local_arc_easy", "local_arc_challenge", "local_hellaswag", "local_piqa",
                                      "local_boolq", "local_openbookqa"]
    assert resolve_tasks("arc_easy, arc_easy,boolq") == ["arc_easy", "boolq"]


def test_normalize_results_groups_filters_and_stderr():
    raw = {
        "results": {
            "grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": 0.1},
            "sub_a": {"alias": " - a", "acc,none": 0.4, "acc_stderr,none": "N/A", "sample_len": 10},
            "sub_b": {"alias": " - b", "acc,none": 0.6, "acc_stderr,none": 0.2, "exact_match,strict-match": 0.3},
        },
        "group_subtasks": {"grp": ["sub_a", "sub_b"]},
        "n-shot": {"sub_a": 5, "sub_b": 5},
        "versions": {"grp": 2, "sub_a": 1.0, "sub_b": 1.0},
        "n-samples": {"sub_a": {"original": 10, "effective": 10}, "sub_b": {"original": 30, "effective": 20}},
        "higher_is_better": {"sub_a": {"acc": True}, "sub_b": {"acc": True, "exact_match": True}},
    }
    out = lm_eval_runner.normalize_results(raw, limit=20)
    assert out["grp"]["acc"] == {"value": 0.5, "stderr": 0.1, "n_shot": 5, "limit": 20, "samples": 30,
                                 "samples_total": 40, "version": 2, "higher_is_better": True}
    assert out["sub_a"]["acc"]["stderr"] is None and out["sub_a"]["acc"]["parent"] == "grp"
    assert out["sub_b"]["exact_match,strict-match"]["value"] == 0.3


def test_compare_retention_and_direction():
    base = {"t": {"acc": {"value": 0.8, "higher_is_better": True}, "ppl": {"value": 10.0, "higher_is_better": False}}}
    pruned = {"t": {"acc": {"value": 0.6, "higher_is_better": True}, "ppl": {"value": 20.0, "higher_is_better": False}}}
    c = compare(base, pruned)
    assert c["t"]["acc"]["delta"] == pytest.approx(-0.2) and c["t"]["acc"]["retention_pct"] == pytest.approx(75.0)
    assert c["t"]["ppl"]["delta"] == pytest.approx(10.0) and c["t"]["ppl"]["retention_pct"] == pytest.approx(50.0)


def test_headline_means_main_metrics():
    from hf_layerprune.evaluation import headline

    rec = lambda v, parent=None: {"value": v, **({"parent": parent} if parent else {})}  # noqa: E731
    report = {"evaluation": {
        "base": {"a": {"acc": rec(0.8), "acc_norm": rec(0.9)}, "b": {"acc": rec(0.6)}},
        "pruned": {"a": {"acc": rec(0.7), "acc_norm": rec(0.72)}, "b": {"acc": rec(0.5)}, "sub": {"acc": rec(0.1, "b")},
                   "only_pruned": {"acc": rec(0.2)}},
        "perplexity": {"base": {"perplexity": 5.0, "seq_len": 512}, "pruned": {"perplexity": 7.0, "seq_len": 512}},
    }}
    h = headline(report)
    assert h["mean_accuracy"] == pytest.approx((0.72 + 0.5) / 2) and h["mean_accuracy_base"] == pytest.approx(0.75)
    assert h["retention_pct"] == pytest.approx(100 * 0.61 / 0.75) and h["accuracy_tasks"] == 2
    assert (h["perplexity"], h["perplexity_base"], h["perplexity_seq_len"]) == (7.0, 5.0, 512)
    assert headline({})["mean_accuracy"] is None


# ------------------------------------------------------------------------------------------- perplexity
def direct_perplexity(model, ids: torch.Tensor, seq_len: int, stride: int) -> float:
    """Independent reference: the Hugging Face docs' strided loop with labels=-100 and the model's own loss."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + seq_len, ids.numel())
        trg_len = end - prev_end
        inp = ids[begin:end].unsqueeze(0)
        labels = inp.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(inp, labels=labels).loss
        valid = int((labels[:, 1:] != -100).sum())
        if valid:
            nll_sum += float(loss) * valid
            n_tokens += valid
        prev_end = end
        if end == ids.numel():
            break
    return math.exp(nll_sum / n_tokens)


@pytest.mark.parametrize("seq_len,stride,batch", [(16, None, 1), (16, None, 3), (16, 8, 2), (40, 16, 4)])
def test_perplexity_matches_direct_computation(model, tok, text_file, seq_len, stride, batch):
    out = perplexity(model, tok, str(text_file), seq_len=seq_len, stride=stride, batch_size=batch)
    rows = wikitext_rows(TEXT)
    ids = torch.tensor(tok("\n\n".join(rows))["input_ids"])
    assert out["tokens_total"] == ids.numel() and out["seq_len"] == seq_len and out["stride"] == (stride or seq_len)
    assert out["perplexity"] == pytest.approx(direct_perplexity(model, ids, seq_len, stride or seq_len), rel=1e-4)
    assert out["source"] == str(text_file.resolve())
    if stride is None:  # non-overlapping: every window predicts all but its first token
        assert out["tokens"] == ids.numel() - math.ceil(ids.numel() / seq_len) + (1 if ids.numel() % seq_len == 1 else 0)


def test_perplexity_batches_fit_the_logits_budget_and_give_the_same_value(model, tok, text_file, monkeypatch):
    """A large vocabulary makes the logits the biggest tensor of the run: the windows per batch are capped so that
    they fit LOGITS_BUDGET (one at least), and the value does not depend on the batching."""
    import importlib

    ppl_module = importlib.import_module("hf_layerprune.evaluation.perplexity")

    widths = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[0]),
                                             with_kwargs=True)
    try:
        free = perplexity(model, tok, str(text_file), seq_len=16, batch_size=4)
        assert max(widths) == 4
        widths.clear()
        vocab = model.get_output_embeddings().weight.shape[0]
        monkeypatch.setattr(ppl_module, "LOGITS_BUDGET", 2 * 16 * vocab * 4)  # two windows of float32 logits
        capped = perplexity(model, tok, str(text_file), seq_len=16, batch_size=4)
        assert max(widths) == 2
    finally:
        handle.remove()
    assert capped["perplexity"] == pytest.approx(free["perplexity"], rel=1e-6) and capped["tokens"] == free["tokens"]


def test_perplexity_rows_and_sources(tmp_path):
    assert wikitext_rows(" = A = \n\n b c \n") == [" = A = \n", "", " b c \n"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    assert load_text_rows(str(jsonl))[0] == ["one", "two"]
    with pytest.raises(LayerPruneError, match="not found"):
        load_text_rows(str(tmp_path / "missing.txt"))
    assert windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]


def test_perplexity_wikitext_offline_fails_clearly(model, tok, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(LayerPruneError, match="local file"):
        perplexity(model, tok, "wikitext", seq_len=16)


# ------------------------------------------------------------------------------------------- speed
def test_measure_speed_is_sane(model, tok, tmp_path):
    model.save_pretrained(tmp_path / "m")
    out = measure_speed(model, tok, prompt_len=16, decode_tokens=4, repeats=2, model_dir=tmp_path / "m")
    assert out["parameters"] == sum(p.numel() for p in model.parameters())
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_ms_per_token", "weights_bytes", "disk_bytes"):
        assert out[key] > 0, key
    assert out["peak_memory_kind"] in ("cpu_rss_delta", None) and out["device"] == "cpu"
    assert out["kv_cache_bytes_per_token"] == 2 * 2 * 8 * 4 * 4  # K+V x kv_heads x head_dim x fp32 x layers
    assert out["weights_disk_bytes"] <= out["disk_bytes"]


def test_kv_cache_bytes_counts_attention_layers_only():
    from types import SimpleNamespace

    cfg = SimpleNamespace(num_attention_heads=8, hidden_size=64, num_key_value_heads=2, num_hidden_layers=4,
                          dtype="bfloat16", layer_types=["full_attention", "linear_attention", "sliding_attention", "full_attention"])
    assert kv_cache_bytes_per_token(cfg) == 2 * 2 * 8 * 2 * 3
    decilm = SimpleNamespace(num_attention_heads=8, hidden_size=64, num_hidden_layers=3, dtype="float16",
                             block_configs=[{"attention": {"n_heads_in_group": 4}}, {"attention": {"no_op": True}},
                                            {"attention": {"n_heads_in_group": 2}}])
    assert kv_cache_bytes_per_token(decilm) == 2 * 8 * 2 * 2 + 2 * 4 * 8 * 2


# ------------------------------------------------------------------------------------------- pair + report + card
def test_evaluate_pair_numbers_land_in_report_and_card(model, tok, tasks_dir, text_file, tmp_path):
    import copy

    from huggingface_hub import ModelCard

    from hf_layerprune.flow.finish import rerender
    from hf_layerprune.report import read_report, write_report
    from hf_layerprune.surgery.layers import remove_layers

    pruned = copy.deepcopy(model)
    remove_layers(pruned, [2])
    settings = EvalSettings(tasks=["tiny_mc"], include_path=str(tasks_dir), batch_size=4, perplexity=str(text_file),
                            seq_len=16, prompt_len=8, decode_tokens=2, cache_dir=str(tmp_path / "cache"))
    section = evaluate_pair(model, pruned, tok, settings, log=lambda m: None)
    assert section["settings"]["tasks"] == ["tiny_mc"] and section["settings"]["seq_len"] == 16
    b, p = section["base"]["tiny_mc"]["acc"], section["pruned"]["tiny_mc"]["acc"]
    assert section["comparison"]["tiny_mc"]["acc"]["delta"] == pytest.approx(p["value"] - b["value"])
    assert section["perplexity"]["base"]["seq_len"] == 16
    assert section["perplexity"]["pruned"]["perplexity"] != section["perplexity"]["base"]["perplexity"]
    assert section["speed"]["pruned"]["kv_cache_bytes_per_token"] * 4 == section["speed"]["base"]["kv_cache_bytes_per_token"] * 3

    out = tmp_path / "out"
    out.mkdir()
    report = {"format_version": 1, "base_model": "acme/tiny-llama", "base_revision": "a" * 40, "model_type": "llama",
              "granularity": "block", "num_layers_before": 4, "num_layers_after": 3, "removed_layers": [2],
              "kept_layers": [0, 1, 3], "parameters_before": 1000, "parameters_after": 750, "evaluation": section,
              "base_card": {"license": "mit", "source": "test"}}
    write_report(out, json.loads(json.dumps(report)))
    card = ModelCard.load(rerender(out, online=False))
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("tiny_mc", "acc")] == round(p["value"], 4)
    assert results[("tiny_mc", "acc_norm")] == round(section["pruned"]["tiny_mc"]["acc_norm"]["value"], 4)
    assert f"{100 * p['value']:.1f}" in card.text and f"{100 * b['value']:.1f}" in card.text
    assert f"{section['perplexity']['pruned']['perplexity']:.2f}" in card.text
    assert read_report(out)["evaluation"]["pruned"]["tiny_mc"]["acc"]["value"] == p["value"]


def test_evaluate_cli_updates_report_and_card(model, tok, tasks_dir, text_file, tmp_path):
    from typer.testing import CliRunner

    from hf_layerprune.flow.finish import rerender
    from hf_layerprune.cli import app
    from hf_layerprune.report import read_report, write_report

    out = tmp_path / "pruned"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_report(out, {"format_version": 1, "base_model": "acme/unreachable-base", "num_layers_before": 5,
                       "num_layers_after": 4, "removed_layers": [4], "kept_layers": [0, 1, 2, 3]})
    rerender(out, online=False)
    result = CliRunner().invoke(app, [
        "evaluate", str(out), "--no-base", "--tasks", "tiny_mc", "--include-path", str(tasks_dir), "--limit", "5",
        "--perplexity", str(text_file), "--seq-len", "16", "--no-speed", "--no-cache", "--json", str(tmp_path / "e.json"),
    ])
    assert result.exit_code == 0, result.output
    section = read_report(out)["evaluation"]
    assert section["base"] is None and section["pruned"]["tiny_mc"]["acc"]["limit"] == 5
    assert json.loads((tmp_path / "e.json").read_text())["pruned"] == section["pruned"]
    assert "tiny\\_mc" in (out / "README.md").read_text()

    bad = CliRunner().invoke(app, ["evaluate", str(out), "--no-base", "--tasks", "tiny_mx", "--include-path", str(tasks_dir)])
    assert bad.exit_code == 2 and "tiny_mx" in bad.output


# ------------------------------------------------------------------------------------------- local benchmark tasks
def _benchmark_module(name: str):
    """A script under benchmarks/ imported as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _local_tasks_module():
    return _benchmark_module("local_tasks")


def test_local_tasks_render_with_absolute_paths(tmp_path):
    lt = _local_tasks_module()
    try:
        data = lt.data_dir()
    except FileNotFoundError:
        pytest.skip("benchmark data (../shared/data or LAYERPRUNE_DATA_DIR) not present")
    inc = lt.include_path(out_dir=tmp_path / "inc")
    names = sorted(p.name for p in inc.glob("*.yaml"))
    assert {"local_arc_easy.yaml", "local_hellaswag.yaml", "local_piqa.yaml", "local_wikitext.yaml",
            "_local_mmlu.yaml", "local_mmlu_anatomy.yaml"} <= set(names)
    assert len([n for n in names if n.startswith("local_mmlu_")]) == 57
    text = (inc / "local_piqa.yaml").read_text() + (inc / "utils.py").read_text()
    assert "@PATH" not in text and json.dumps(str(data / "piqa" / "valid.jsonl")) in text
    assert not list((REPO / "benchmarks" / "tasks").glob("*.yaml"))  # only templates live in the repo
    counts = lt.check_tasks(inc, ["local_openbookqa", "local_piqa"])
    assert counts == {"local_openbookqa": {"docs": 500, "bad_targets": 0}, "local_piqa": {"docs": 1838, "bad_targets": 0}}


@pytest.mark.slow
def test_local_tasks_full_doc_counts_and_a_limit_20_run(tmp_path, tok):
    lt = _local_tasks_module()
    inc = lt.include_path(out_dir=tmp_path / "inc")
    counts = lt.check_tasks(inc)
    assert {k: v["docs"] for k, v in counts.items()} == lt.EXPECTED_DOCS
    assert all(v["bad_targets"] == 0 for v in counts.values())
    out = run_lm_eval(tiny_llama(), tok, list(lt.EXPECTED_DOCS), include_path=inc, limit=20, use_cache=False)
    for name in lt.EXPECTED_DOCS:
        assert name in out["results"], name


def test_retention_adds_up_doc_ranges_and_pairs_the_same_docs(tmp_path):
    rt = _benchmark_module("retention")
    assert rt.parse_layers("13-18") == [13, 14, 15, 16, 17, 18] and rt.parse_layers("3,12-14,25") == [3, 12, 13, 14, 25]
    assert rt.describe("cut:13-18") == "unhealed cut:13-18" and rt.describe("base") == "base"
    tasks = rt.TASKS
    # two ranges stored one after the other for base; the pruned model loses docs 1 and 3 of the first task only
    base = {"spec": "base", "docs": {t: {} for t in tasks}}
    for lo, hi in ((0, 2), (2, 4)):
        for t in tasks:
            base["docs"][t].update({str(i): 1.0 for i in range(lo, hi)})
        rt.save(tmp_path, "base", base)
    pruned = {"spec": "cut:1", "what": "unhealed cut:1",
              "docs": {t: {str(i): (0.0 if t == tasks[0] and i in (1, 3) else 1.0) for i in range(4)} for t in tasks}}
    rt.save(tmp_path, "cut", pruned)
    base_mean, mean, diff, se, n, accs = rt.paired(rt.load(tmp_path, "base"), rt.load(tmp_path, "cut"))
    assert n == 4 and base_mean == 1.0 and accs == [0.5, 1.0, 1.0] and mean == pytest.approx(1 - 0.5 / 3) and diff == pytest.approx(-0.5 / 3)
    # paired SE: task 0 differences (0, -1, 0, -1) have sample variance 1/3 over 4 docs, weighted 1/9
    assert se == pytest.approx(math.sqrt(1 / 3 / 4 / 9))
    table = rt.render(tmp_path, ["base", "cut"], versus=["cut"])
    row = [line for line in table.splitlines() if line.startswith("| cut |")][0]
    assert "unhealed cut:1 | 4 |" in row and "83.3%" in row and "-16.7 ± " in row and row.endswith("| – |")
    with pytest.raises(SystemExit, match="no base model"):
        rt.render(tmp_path / "empty", ["cut"], versus=[])


def test_reheal_distils_a_pipeline_output_into_a_loadable_model(tmp_path):
    """benchmarks/reheal.py: a further healer on a saved pruned model, from the unpruned one, saved atomically."""
    from tiny_models import save_word_tokenizer, tiny_model
    from transformers import AutoModelForCausalLM

    from hf_layerprune.report import write_report
    from hf_layerprune.surgery.layers import remove_layers

    base = tiny_model("llama", num_layers=4, seed=3)
    with torch.no_grad():  # make the layer that is removed matter, so there is something to distil back
        base.model.layers[2].mlp.down_proj.weight.mul_(30)
    base.save_pretrained(tmp_path / "base")
    save_word_tokenizer(tmp_path / "base")
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    remove_layers(pruned, [2])
    pruned.save_pretrained(tmp_path / "out")
    save_word_tokenizer(tmp_path / "out")
    write_report(tmp_path / "out", {"removed_layers": [2], "kept_layers": [0, 1, 3], "num_layers_before": 4,
                                    "healing": {"method": "absorb"}})
    (tmp_path / "text.txt").write_text(" ".join(f"w{3 + i % 100}" for i in range(400)))
    rh = _benchmark_module("reheal")
    args = ["--model", str(tmp_path / "base"), "-o", str(tmp_path / "kd"), "--steps", "6", "--batch-size", "2",
            "--seq-len", "16", "--self-samples", "6", "--eval-samples", "2", "--text", str(tmp_path / "text.txt"),
            "--text-samples", "8", "--self-cache", str(tmp_path / "self.pt"), "--learning-rate", "2e-3"]
    rh.main([str(tmp_path / "out"), *args])
    healed, info = AutoModelForCausalLM.from_pretrained(tmp_path / "kd", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and healed.config.num_hidden_layers == 3
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    changed = [n for n, p in healed.state_dict().items() if not torch.equal(p, before.state_dict()[n])]
    assert any("down_proj" in n for n in changed) and any("q_proj" in n for n in changed)  # LoRA on every linear, merged
    report = json.loads((tmp_path / "kd" / "layerprune.json").read_text())
    assert report["healing"]["method"] == "absorb+distill" and report["removed_layers"] == [2]
    assert [r["method"] for r in report["healing"]["stages"]] == ["absorb", "distill"]
    assert report["healing"]["stages"][-1]["kd_after"] < report["healing"]["stages"][-1]["kd_before"]
    assert torch.load(tmp_path / "self.pt").shape == (6, 16)  # sampled once, cached
    # a source without layerprune.json is refused and nothing is written
    with pytest.raises(FileNotFoundError):
        rh.main([str(tmp_path / "base"), *args[:3], str(tmp_path / "kd2"), *args[4:]])
    assert not (tmp_path / "kd2").exists()


# ------------------------------------------------------------------------------------------- paired comparison
def _docs(scores, targets=None, choices=None, metric="acc"):
    out = {"doc_id": list(range(len(scores))), metric: [float(x) for x in scores]}
    if targets is not None:
        out["target"] = list(targets)
    if choices is not None:
        out["choices"] = [choices] * len(scores) if isinstance(choices, int) else list(choices)
    return out


def test_paired_se_equals_a_hand_computed_value():
    from hf_layerprune.evaluation.paired import compare_task, headline_of

    base = _docs([1, 1, 0, 1, 0, 1], targets=[0, 1, 2, 0, 1, 2], choices=3)
    pruned = _docs([1, 0, 0, 1, 1, 0])
    rec = compare_task(base, pruned, "acc")
    # differences 0, -1, 0, 0, 1, -1: mean -1/6; squared deviations (1+25+1+1+49+25)/36 = 102/36;
    # variance 102/36/5 = 17/30; SE = sqrt(17/30/6) = sqrt(17/180)
    assert rec["docs"] == 6 and rec["delta"] == pytest.approx(-1 / 6)
    assert rec["delta_se"] == pytest.approx(math.sqrt(17 / 180))
    assert rec["base"] == pytest.approx(4 / 6) and rec["pruned"] == pytest.approx(3 / 6)
    assert rec["base_se"] == pytest.approx(math.sqrt((4 / 6) * (2 / 6) * 6 / 5 / 6))  # Bernoulli: p(1-p) n/(n-1) / n
    assert rec["measurable"] is False  # |Δ| = 0.167 < 2 × 0.307
    assert rec["chance"] == pytest.approx(1 / 3) and rec["majority"] == pytest.approx(1 / 3)
    # docs only one model has are not paired
    longer = _docs([1, 0, 0, 1, 1, 0, 1, 1])
    assert compare_task(base, longer, "acc")["docs"] == 6
    # the headline SE of k tasks adds their paired variances: sqrt(se1² + se2²) / k
    other = dict(rec, delta_se=0.1, base=0.5, pruned=0.45, included=True, retention_pct=90.0)
    head = headline_of({"a": dict(rec, included=True), "b": other})
    assert head["delta_se"] == pytest.approx(math.sqrt(17 / 180 + 0.01) / 2)
    assert head["retention_pct"] == pytest.approx(100 * (3 / 6 + 0.45) / (4 / 6 + 0.5))
    assert head["retention_se_pts"] == pytest.approx(100 * head["delta_se"] / ((4 / 6 + 0.5) / 2))


def test_task_below_its_majority_rate_is_excluded_from_the_headline_and_flagged():
    from hf_layerprune.evaluation.paired import paired_comparison

    # boolq-like: 70 % "yes", the base model right on 40 % of the docs (below always-yes); the pruned model drifts
    # to "yes" and "gains" 25 points, which must not move the headline
    boolq_b = _docs([1] * 16 + [0] * 24, targets=[1] * 28 + [0] * 12, choices=2)
    boolq_p = _docs([1] * 26 + [0] * 14)
    # a 4-choice task the base model is clearly good at, and one it is barely above chance on
    good_b = _docs([1] * 30 + [0] * 10, targets=[0, 1, 2, 3] * 10, choices=4)
    good_p = _docs([1] * 27 + [0] * 13)
    weak_b = _docs([1] * 12 + [0] * 28, targets=[0, 1, 2, 3] * 10, choices=4)
    weak_p = _docs([1] * 10 + [0] * 30)
    out = paired_comparison({"boolq": boolq_b, "good": good_b, "weak": weak_b},
                            {"boolq": boolq_p, "good": good_p, "weak": weak_p},
                            {"boolq": "acc", "good": "acc", "weak": "acc"})
    tasks, head = out["tasks"], out["headline"]
    assert tasks["boolq"]["included"] is False and tasks["boolq"]["reason"] == "base 40.0 ≤ majority 70.0"
    assert tasks["boolq"]["baseline_kind"] == "majority"
    assert tasks["weak"]["included"] is False  # 30.0 vs chance 25.0 with SE 7.3: not clearly above
    assert tasks["weak"]["reason"].startswith("base 30.0 is within 2 SE") and "chance 25.0" in tasks["weak"]["reason"]
    assert tasks["good"]["included"] is True and "reason" not in tasks["good"]
    assert head["tasks"] == ["good"] and set(head["excluded"]) == {"boolq", "weak"}
    assert head["retention_pct"] == pytest.approx(100 * 27 / 30)
    # a generation task (no answer choices) must be clearly above 0
    from hf_layerprune.evaluation.paired import compare_task

    gen = compare_task(_docs([1] * 20 + [0] * 20, metric="exact_match"), _docs([1] * 18 + [0] * 22, metric="exact_match"),
                       "exact_match")
    assert gen["included"] and gen["baseline"] == 0.0 and gen["chance"] is None
    rare = compare_task(_docs([1] + [0] * 39, metric="exact_match"), _docs([0] * 40, metric="exact_match"), "exact_match")
    assert not rare["included"] and rare["reason"].startswith("base 2.5 is within 2 SE") and rare["reason"].endswith("zero 0.0")


def test_implausible_speedup_is_flagged_not_reported(tmp_path):
    from hf_layerprune.flow.finish import rerender
    from hf_layerprune.evaluation.speed import plausibility
    from hf_layerprune.report import write_report

    def rec(layers, prefill, decode, rss):
        return {"device": "cpu", "dtype": "float32", "batch_size": 1, "prompt_len": 128, "decode_tokens": 32,
                "torch_threads": 1, "parameters": 1000 + 100 * layers, "num_layers": layers,
                "weights_bytes": 4 * (1000 + 100 * layers), "prefill_tokens_per_s": prefill,
                "decode_tokens_per_s": decode, "decode_ms_per_token": 1000 / decode, "peak_memory_bytes": rss,
                "peak_memory_kind": "cpu_rss_delta"}

    # the old example's numbers: 30 -> 24 layers, prefill x2.76 and decode x1.58 from one run each
    speed = {"base": rec(30, 1000.0, 50.0, 20480), "pruned": rec(24, 2763.0, 78.9, 4096)}
    check = plausibility(speed)
    assert check["bound"] == pytest.approx(30 / 24) and check["flagged"]
    assert check["prefill"]["flagged"] and check["decode"]["flagged"]
    # within the bound, or beyond it by less than the measured spread: not flagged
    ok = {"base": rec(30, 1000.0, 50.0, 0), "pruned": rec(24, 1200.0, 60.0, 0),
          "speedup": {"prefill": {"median": 1.2, "spread": 0.02}, "decode": {"median": 1.35, "spread": 0.2}}}
    assert plausibility(ok)["flagged"] is False
    ok["speedup"]["decode"]["spread"] = 0.05
    assert plausibility(ok)["decode"]["flagged"] is True

    report = {"format_version": 1, "base_model": "org/base", "num_layers_before": 30, "num_layers_after": 24,
              "removed_layers": list(range(13, 19)), "kept_layers": [i for i in range(30) if not 13 <= i <= 18],
              "evaluation": {"settings": {"tasks": []}, "base": {}, "pruned": {}, "speed": {**speed, "plausibility": check}}}
    out = tmp_path / "m"
    out.mkdir()
    write_report(out, report)
    text = rerender(out, online=False, plots=False).read_text()
    assert "Prefill speed not reported" in text and "Decode speed not reported" in text and "×1.25" in text
    assert "2,763" not in text and "Prefill throughput" not in text  # the artefact is not shown as a result
    assert "Peak RSS" not in text  # 20 KiB -> 4 KiB measures nothing


def test_speed_pair_interleaves_pins_threads_and_checks_the_bound(tok):
    from hf_layerprune.evaluation import measure_speed_pair
    from hf_layerprune.surgery.layers import remove_layers

    base = tiny_llama(num_layers=4)
    pruned = tiny_llama(num_layers=4)
    remove_layers(pruned, [1, 2])
    torch.set_num_threads(2)
    out = measure_speed_pair(base, pruned, tok, prompt_len=16, decode_tokens=4, warmup=1, repeats=3, threads=1)
    assert torch.get_num_threads() == 2  # restored afterwards
    assert out["protocol"] == {"warmup": 1, "repeats": 3, "order": "interleaved, alternating", "threads": 1,
                               "batch_size": 1, "prompt_len": 16, "decode_tokens": 4}
    assert out["base"]["torch_threads"] == 1 and out["base"]["num_layers"] == 4 and out["pruned"]["num_layers"] == 2
    assert len(out["base"]["prefill_seconds_all"]) == 3 and len(out["speedup"]["prefill"]["per_round"]) == 3
    assert out["base"]["layer_parameters"] == 2 * out["pruned"]["layer_parameters"] - sum(
        p.numel() for n, p in base.named_parameters() if n == "model.norm.weight")
    check = out["plausibility"]
    # the largest ratio that removing layers can explain: here layers 4 -> 2 (the final norm is not removed)
    assert check["bound"] == pytest.approx(2.0) and check["basis"] == "decoder layers 4 → 2"
    assert out["base"]["peak_memory_bytes"] is None  # CPU: no RSS-growth figure that measures nothing
