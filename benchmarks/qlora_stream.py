"""The 70B path on one GPU: score and heal a 4-bit NF4 copy, write the bf16 output by streaming the shards.

1. load the bf16 checkpoint quantized to 4-bit NF4 on the GPU (bitsandbytes; on a CPU: as it is, for a dry run);
2. score whole layers with `bi` and remove the chosen ones from the 4-bit model;
3. train LoRA on it (peft, LM loss, a few steps);
4. write the pruned checkpoint from the original shards with the adapter merged into the bf16 weights, one tensor at
   a time (hf_layerprune/streamed_merge.py), and check a merged layer against peft's in-memory merge of it.
Prints peak GPU memory (torch.cuda.max_memory_allocated), peak RSS and the time of each step.

    python benchmarks/qlora_stream.py --shape 7b              # on a CUDA machine (64 GiB disk: 7b or 13b shapes)
    python benchmarks/qlora_stream.py --shape tiny --steps 2  # CPU dry run, no quantization
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import GiB, HERE, SHAPES, build_checkpoint  # noqa: E402

SHAPES = {**SHAPES, "13b": (5120, 13824, 40, 40, 40, 32000)}


def peaks() -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
    cuda = f", GPU {torch.cuda.max_memory_allocated() / GiB:.2f} GiB" if torch.cuda.is_available() else ""
    return f"peak RSS {rss:.2f} GiB{cuda}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="7b")
    parser.add_argument("--drop", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_layerprune.healing.training import LMLoss, Rows, TrainSettings, train
    from hf_layerprune.scoring import get_metric, run_metric
    from hf_layerprune.scoring.run import build_context
    from hf_layerprune.streamed_merge import lora_scaling, merge_weight, write_merged
    from hf_layerprune.surgery import remove_layers

    work = HERE / "out" / "qlora_stream"
    src = work / f"llama-{args.shape}"
    t = time.perf_counter()
    build_checkpoint(src, args.shape)
    print(f"checkpoint {src} ({time.perf_counter() - t:.0f} s)")
    cuda = torch.cuda.is_available()
    t = time.perf_counter()
    kwargs = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                        bnb_4bit_compute_dtype=torch.bfloat16),
              "device_map": {"": 0}} if cuda else {"dtype": torch.float32}
    model = AutoModelForCausalLM.from_pretrained(src, **kwargs).eval()
    print(f"loaded {'4-bit NF4 on cuda' if cuda else 'fp32 on cpu (dry run)'}: {time.perf_counter() - t:.0f} s, {peaks()}")
    t = time.perf_counter()
    metric = get_metric("bi")
    ctx, _ = build_context(model, None, [metric], calibration="self", samples=8, seq_len=args.seq_len, seed=0, log=print)
    removed = run_metric(metric, ctx, drop=args.drop)["selected"]
    del ctx
    remove_layers(model, removed)
    print(f"scored with bi, removed {removed}: {time.perf_counter() - t:.0f} s, {peaks()}")
    t = time.perf_counter()
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    ids = torch.randint(3, 32000, (args.steps * 4, args.seq_len), generator=torch.Generator().manual_seed(0))
    train(LMLoss(peft_model), Rows(input_ids=ids), TrainSettings(steps=args.steps, batch_size=4, learning_rate=1e-4,
                                                                   seed=0, optim="adamw_torch"))
    state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    print(f"LoRA trained {args.steps} steps: {time.perf_counter() - t:.0f} s, {peaks()}")
    del peft_model, model
    t = time.perf_counter()
    dst = work / "pruned"
    if dst.exists():
        import shutil

        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    summary = write_merged(src, dst, removed, state, lora_scaling(config))
    print(f"streamed merge into bf16 shards: {len(summary['merged'])} weights, {time.perf_counter() - t:.0f} s, {peaks()}")
    # check one merged weight against the merge of the same factors into the original bf16 tensor
    from safetensors import safe_open

    from hf_layerprune.streamed_merge import lora_factors
    from hf_layerprune.surgery import checkpoint_files, kept_layers

    key = summary["merged"][0]
    a, b = lora_factors(state)[key]
    layer = int(key.split(".")[2])
    original_key = key.replace(f"layers.{layer}.", f"layers.{kept_layers(removed, SHAPES[args.shape][2])[layer]}.", 1)
    for path in checkpoint_files(src):
        with safe_open(path, "pt") as f:
            if original_key in f.keys():
                want = merge_weight(f.get_tensor(original_key), a, b, lora_scaling(config))
    for path in checkpoint_files(dst):
        with safe_open(path, "pt") as f:
            if key in f.keys():
                assert torch.equal(f.get_tensor(key), want), key
    print(f"checked {key} against the in-memory merge of the same factors: equal")


if __name__ == "__main__":
    main()
