"""`--load-in-4bit`, the route for models larger than the device in 16-bit (issue 22): score, cut, QLoRA in place
and evaluate on a 4-bit NF4 model; write the 16-bit output from the original shards with the adapter merged there.
bitsandbytes' CPU backend runs all of it here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_layerprune.surgery import quantized

from hf_layerprune.flow import stages
from hf_layerprune.surgery.base_view import SharedBase
from hf_layerprune.flow.checks import check_4bit_source
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.healing.lora import merge_adapter
from hf_layerprune.surgery.loading import Source, load_model
from hf_layerprune.flow.pipeline import run
from hf_layerprune.recipe import Recipe
from hf_layerprune.surgery.layers import checkpoint_files, remove_layers
from test_evaluation import DATA, TINY_TASK
from tiny_models import VOCAB, save_word_tokenizer, tiny_model

pytestmark = pytest.mark.usefixtures("bnb_cpu_path")  # every test on both of bitsandbytes' CPU paths (conftest)

QUIET = dict(log=lambda message: None)
FAST = dict(calibration_samples=8, seq_len=16, heal_steps=8, learning_rate=3e-2)
TEXT = " ".join(f"w{3 + (7 * i) % 40}" for i in range(800))  # a cycle of the tiny vocabulary: learnable


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("q4") / "src"
    tiny_model("llama", num_layers=6).to(torch.bfloat16).save_pretrained(path, max_shard_size="100KB")  # 2 shards
    save_word_tokenizer(path)
    (path.parent / "text.raw").write_text(TEXT, encoding="utf-8")
    return path


def recipe(src: Path, **options) -> Recipe:
    return Recipe(model=str(src), drop=2, load_in_4bit=True, calibration=str(src.parent / "text.raw"), **FAST, **options)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in checkpoint_files(folder):
        out.update(load_file(path))
    return out


def test_defaults_are_gromovs_recipe():
    recipe = Recipe(model="m", drop=4, load_in_4bit=True).resolve_defaults()
    assert (recipe.metric, recipe.heal) == ("angular", "qlora")
    assert (Recipe(model="m", drop=4).resolve_defaults().metric, Recipe(model="m", drop=4).resolve_defaults().heal) == \
        ("auto", "absorb")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_output_is_the_source_shards_with_the_adapter_merged_in_16_bit(src, tmp_path, monkeypatch, device):
    """The written weights equal: the bf16 source, layers removed, the trained adapter merged by peft in memory
    (bit for bit); the 4-bit weights are never saved, and the output is a stock bf16 checkpoint."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    captured = {}
    real = quantized.unmerged_adapter

    def spy(model):
        captured["state"], captured["scaling"] = real(model)
        return captured["state"], captured["scaling"]

    monkeypatch.setattr(quantized, "unmerged_adapter", spy)
    out = tmp_path / "out"
    report = run(recipe(src, output_dir=str(out), evaluate=False, device=device), **QUIET)
    removed = report.cut.removed_layers
    assert len(removed) == 2 and report.healing.method == "qlora"
    assert report.healing.loss_after < report.healing.loss_before
    assert report.source.dtype == "bfloat16" and report.source.parameters_before == tiny_param_count(src)
    state = captured["state"]
    assert len(state) == 2 * 3 * 4  # A and B of gate/up/down in each of the 4 kept layers

    from peft import LoraConfig

    expected = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    remove_layers(expected, removed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"], lora_dropout=0.0)
    assert captured["scaling"] == 2.0
    merged = merge_adapter(expected, config, {f"base_model.model.{k}": v.cpu() for k, v in state.items()})
    want = merged.state_dict()
    got = weights(out)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == torch.bfloat16 and torch.equal(got[key], value), key
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] == 4 and "quantization_config" not in written
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # stock: no missing or unexpected keys
    assert reloaded.config.num_hidden_layers == 4
    saved = json.loads((out / "layerprune.json").read_text())
    assert saved["recipe"]["load_in_4bit"] is True and saved["parameters_after"] == sum(v.numel() for v in got.values())


def tiny_param_count(folder: Path) -> int:
    return sum(v.numel() for v in weights(folder).values())


def test_run_as_base_is_the_4bit_model_as_loaded_after_qlora(src):
    """The base view of a 4-bit model healed in place: the adapter disabled and the layers back, logits equal to
    a fresh 4-bit load of the source exactly; the pruned model's logits are the adapted ones."""
    plan = recipe(src, evaluate=False).resolve_defaults()
    model, tokenizer, _ = stages.load(plan, **QUIET)
    assert quantized.is_4bit(model)
    fresh, _ = load_model(str(src), load_in_4bit=True, need_tokenizer=False)
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = fresh(ids).logits
    base = SharedBase(model)
    section = stages.cut(model, [2, 3], **QUIET)
    stages.heal(model, tokenizer, plan, section, base=base, **QUIET)
    assert quantized.unmerged_adapter(model)[0]  # trained and left unmerged
    with torch.no_grad(), base.active() as as_base:
        assert torch.equal(as_base(ids).logits, want)
        assert base.copied_bytes() == 0  # nothing copied: the 4-bit weights were never changed
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, want)


def held_out(src: Path) -> Path:
    """Evaluation text other than the calibration text (the pipeline refuses to measure on what it calibrated on)."""
    path = src.parent / "held-out.raw"
    path.write_text(" ".join(f"w{3 + (11 * i) % 40}" for i in range(800)), encoding="utf-8")
    return path


def test_evaluated_in_4bit_and_the_card_says_so(src, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TINY_TASK.format(path=json.dumps(str((DATA / "tiny_mc.jsonl").resolve()))))
    out = tmp_path / "out"
    report = run(recipe(src, output_dir=str(out), tasks=["tiny_mc"], include_path=str(tasks), limit=4,
                        perplexity=str(held_out(src)), perplexity_tokens=64), **QUIET)
    settings = report.evaluation.settings
    assert settings.dtype == "4-bit NF4, bfloat16 compute" and settings.quantization["type"] == "nf4"
    assert report.evaluation.base and report.evaluation.pruned
    speed = report.evaluation.speed
    if speed is not None and speed.base:  # parameters as used: the packed 4-bit weights count their unpacked shape
        assert speed.base.parameters == tiny_param_count(src)
    card = (out / "README.md").read_text()
    assert "4-bit NF4, bfloat16 compute" in card and "loaded the model in 4-bit" in card


def test_a_gguf_or_pickle_source_is_refused_before_loading(tmp_path):
    recipe = Recipe(model="x", drop=1, load_in_4bit=True)
    with pytest.raises(ConfigError, match="already quantized"):
        check_4bit_source(recipe, Source("gguf", "m.gguf", tmp_path, "m.gguf"))
    with pytest.raises(ConfigError, match="safetensors shards"):
        check_4bit_source(recipe, Source("hub", "org/m"), files=["config.json", "pytorch_model.bin"])
    check_4bit_source(recipe, Source("hub", "org/m"), files=["config.json", "model.safetensors"])


def test_sweep_refuses_4bit(src, tmp_path):
    from hf_layerprune.flow.sweep import run_sweep

    with pytest.raises(ConfigError, match="once per depth"):
        run_sweep(recipe(src), [1, 2], tmp_path / "sweep", **QUIET)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("local_rank, expected", [("0", "cuda:0"), ("3", "cuda:1")])
def test_a_run_without_device_uses_this_ranks_gpu_when_there_is_one(src, monkeypatch, local_rank, expected):
    """No --device: the GPU (LOCAL_RANK's, modulo the GPUs seen) when CUDA is available, else the CPU; an explicit
    --device-map leaves placement to accelerate."""
    from transformers import PreTrainedModel

    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, *a, **k: moved.append(a[0]) or self)
    load_model(str(src), need_tokenizer=False)
    assert moved == [expected]


@pytest.mark.parametrize("hidden", [32, 64])  # 32: a shape the AVX512-BF16 repack cannot block; 64: one it can
def test_4bit_logits_are_the_dequantized_weights_on_both_cpu_paths(tmp_path, bnb_cpu_path, hidden):
    """Whatever the CPU, a 4-bit model computes in its compute dtype with the dequantized NF4 weights: equal to a
    float32 model holding those weights (an independent computation through `dequantize_4bit`). Without
    `quantized.one_cpu_path`, the forced AVX512-BF16 path repacks the weights in eval mode: the 32-wide model
    crashes in bitsandbytes ("shape '[32, 0]' is invalid"), the 64-wide one computes in bf16 (or, on a CPU without
    the instruction, runs the portable kernel on repacked bytes)."""
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit

    path = tmp_path / "m"
    tiny_model("llama", num_layers=2, hidden_size=hidden, intermediate_size=2 * hidden).save_pretrained(path)
    model, _ = load_model(str(path), dtype="float32", load_in_4bit=True, need_tokenizer=False)
    reference = tiny_model("llama", num_layers=2, hidden_size=hidden, intermediate_size=2 * hidden)
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, Linear4bit):
                modules[name].weight.copy_(dequantize_4bit(module.weight.data, module.weight.quant_state).float())
        ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
        got, want = model(ids).logits, reference(ids).logits
    assert all(not getattr(m.weight.quant_state, "packing_format_for_cpu", False)
               for m in model.modules() if isinstance(m, Linear4bit))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
