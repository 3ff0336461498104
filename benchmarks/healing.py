"""Healing throughput and memory: hf-layerprune's healer vs plain peft (+ bitsandbytes), same settings, one run.

On CUDA the compared healer is `qlora`; the peer is the plain peft + bitsandbytes recipe (4-bit NF4 load,
`prepare_model_for_kbit_training` with its defaults, the same LoRA config, the same Trainer settings).
On CPU (no bitsandbytes 4-bit there) the healer is `lora` and the peer plain peft + Trainer in fp32.
Each route runs in its own process, so peak memory (CUDA: `max_memory_allocated`; CPU: peak RSS) is its own.
Goal (issue: scale and speed): tokens/s >= the peer's, peak memory <= 0.6x the peer's.

    python benchmarks/healing.py                                   # small random Llama on CPU
    python benchmarks/healing.py --preset 7b --device cuda --seq-len 2048 --batch-size 1 --steps 10
    python benchmarks/healing.py --model path/to/model --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = {
    "small": dict(hidden_size=512, num_hidden_layers=12, intermediate_size=1408, num_attention_heads=8, vocab_size=32000),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32, vocab_size=32000),
}


def make_checkpoint(args, path: Path) -> None:
    """A random-weight Llama (the `--preset` shape) saved in bf16: the model being healed."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**PRESETS[args.preset], num_key_value_heads=PRESETS[args.preset]["num_attention_heads"],
                         max_position_embeddings=max(4096, args.seq_len))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)


def peak_memory(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def route_ours(args, model_path: str, ids: torch.Tensor) -> dict:
    from hf_layerprune.healing import heal
    from hf_layerprune.surgery.loading import load_model

    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    model, _ = load_model(model_path, dtype=dtype, device=args.device, need_tokenizer=False)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    method = "qlora" if args.device.startswith("cuda") else "lora"
    record = heal(model, method, ids, steps=args.steps, batch_size=args.batch_size, rank=args.rank, log=lambda m: None)
    return {"route": f"hf-layerprune --heal {method}", "tokens_per_second": record["tokens_per_second"],
            "final_loss": record["losses"][-1], "gradient_checkpointing": record["gradient_checkpointing"]}


def route_peer(args, model_path: str, ids: torch.Tensor) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hf_layerprune.healing.training import LMLoss, Rows, TrainSettings, train

    cuda = args.device.startswith("cuda")
    if cuda:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": 0})
        torch.cuda.reset_peak_memory_stats()
        model = prepare_model_for_kbit_training(model)  # peft's defaults
        name = "plain peft + bitsandbytes (prepare_model_for_kbit_training defaults)"
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        name = "plain peft + Trainer (fp32)"
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                        target_modules=["gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(0)
    peft_model = get_peft_model(model, config)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=3e-4,
                             optim="paged_adamw_8bit" if cuda else "adamw_torch")
    run = train(LMLoss(peft_model), Rows(input_ids=ids), settings)
    tokens = args.steps * args.batch_size * ids.shape[1]
    return {"route": name, "tokens_per_second": round(tokens / run["seconds"], 2), "final_loss": run["losses"][-1],
            "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False))}


def child(args) -> None:
    torch.manual_seed(0)
    ids = torch.randint(10, 32000 if not args.model else 1000, (args.steps * args.batch_size, args.seq_len))
    fn = route_ours if args.child == "ours" else route_peer
    result = fn(args, args.model_path, ids)
    result["peak_gib"] = round(peak_memory(args.device), 3)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--model", default=None, help="heal this checkpoint instead of a random --preset model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--child", choices=["ours", "peer"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="heal-bench-") as tmp:
        model_path = args.model
        if model_path is None:
            model_path = str(Path(tmp) / "model")
            make_checkpoint(args, Path(model_path))
        results = []
        for route in ("peer", "ours", "peer", "ours"):  # interleaved, best of two each
            cmd = [sys.executable, __file__, "--child", route, "--model-path", model_path, *sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{route} route failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(line[0][7:]) | {"key": route})

    best = {}
    for r in results:
        if r["key"] not in best or r["tokens_per_second"] > best[r["key"]]["tokens_per_second"]:
            best[r["key"]] = r
    import peft
    import transformers

    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    print(f"# healing benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} {gpu}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"model: {args.model or args.preset + ' random Llama'}; {args.steps} steps x {args.batch_size} x {args.seq_len} "
          f"tokens, LoRA r{args.rank} on the MLP")
    print("| route | tokens/s | peak memory (GiB) | gradient checkpointing | last loss |")
    print("|---|---|---|---|---|")
    for key in ("peer", "ours"):
        r = best[key]
        print(f"| {r['route']} | {r['tokens_per_second']:.0f} | {r['peak_gib']:.2f} | {r['gradient_checkpointing']} | {r['final_loss']:.3f} |")
    speed = best["ours"]["tokens_per_second"] / best["peer"]["tokens_per_second"]
    memory = best["ours"]["peak_gib"] / best["peer"]["peak_gib"]
    print(f"ours / peer tokens/s: {speed:.2f}x (goal >= 1.0)")
    print(f"ours / peer peak memory: {memory:.2f}x (goal <= 0.6)")


if __name__ == "__main__":
    main()
