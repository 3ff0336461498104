"""Cost of scoring, in one run on one machine:

1. static metrics (angular + bi + cosine from one capture pass) relative to a plain transformers forward over
   the same tokens (goal <= 1.1x);
2. iterative metrics with the prefix cache vs naive recomputation (the whole model run for every candidate, as
   SLEB / Siddiqui's code do): leave-one-out over every layer, and `--greedy-steps` steps of SLEB-style greedy
   (goal >= 2x faster). Both sides are checked to give the same losses.

Default model: a random Llama built from a config (no download); `--preset 7b` is Llama-2-7B-shaped (use a
GPU: `--device cuda --dtype bfloat16`); `--model` loads a checkpoint instead.

    python benchmarks/scoring.py [--hidden 512 --layers 16 --intermediate 1408 --vocab 32000]
        [--samples 8 --seq-len 256] [--device cpu] [--dtype float32] [--greedy-steps 2]
    python benchmarks/scoring.py --preset 7b --device cuda --dtype bfloat16 --samples 16 --seq-len 1024
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

PRESETS = {
    "small": dict(hidden_size=512, num_hidden_layers=16, intermediate_size=1408, num_attention_heads=8, vocab_size=32000),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32, vocab_size=32000),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 1):
    """(best seconds over `repeats`, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def build_model(args):
    from transformers import AutoModelForCausalLM, LlamaConfig

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model:
        from hf_layerprune.surgery.loading import load_model

        model, _ = load_model(args.model, dtype=args.dtype, device=args.device, need_tokenizer=False)
        return model
    shape = dict(PRESETS[args.preset]) if args.preset else {}
    for key, flag in (("hidden_size", "hidden"), ("num_hidden_layers", "layers"), ("intermediate_size", "intermediate"),
                      ("vocab_size", "vocab"), ("num_attention_heads", "heads")):
        if getattr(args, flag) is not None:
            shape[key] = getattr(args, flag)
    shape = {**PRESETS["small"], **shape}
    config = LlamaConfig(**shape, max_position_embeddings=max(4096, args.seq_len), tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--greedy-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hf_layerprune.architectures import get_architecture
    from hf_layerprune.scoring import ScoringContext, get_metric
    from hf_layerprune.scoring.prefix_cache import ActivationCache
    from hf_layerprune.scoring.run import default_batch_size

    model = build_model(args)
    arch = get_architecture(model.config)
    layers = model.config.num_hidden_layers
    batch_size = args.batch_size or default_batch_size(args.seq_len)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.samples, args.seq_len), generator=g).to(args.device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {model.config.model_type} {params / 1e6:.0f}M params, {layers} layers, hidden {model.config.hidden_size}, "
          f"{args.dtype} on {args.device} ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})")
    print(f"tokens: {args.samples} x {args.seq_len}, micro-batch {batch_size}")

    def plain():
        with torch.no_grad():
            for chunk in ids.split(batch_size):
                model(input_ids=chunk, use_cache=False)

    def static():
        ctx = ScoringContext(model, ids, batch_size=batch_size, keep_states=False)
        return [get_metric(name).score(ctx) for name in ("angular", "bi", "cosine")]

    plain()  # warm-up
    t_plain, _ = timed(plain, args.device, args.repeats)
    t_static, _ = timed(static, args.device, args.repeats)
    print(f"\n[static] plain forward {t_plain:.2f}s | angular+bi+cosine (one capture pass) {t_static:.2f}s "
          f"= {t_static / t_plain:.2f}x  (goal <= 1.1x)")

    # ---- leave-one-out over every layer
    def loo_cached():
        cache = ActivationCache(model, arch, ids, batch_size=batch_size)
        base = cache.loss()
        return [cache.loss([u]) - base for u in range(layers)], cache

    t_loo_cached, (cached_scores, cache) = timed(loo_cached, args.device)

    def loo_naive():
        base = cache.naive_loss()
        return [cache.naive_loss([u]) - base for u in range(layers)]

    t_loo_naive, naive_scores = timed(loo_naive, args.device)
    gap = max(abs(a - b) for a, b in zip(cached_scores, naive_scores))
    print(f"[leave-one-out, {layers} candidates] naive {t_loo_naive:.2f}s | prefix cache {t_loo_cached:.2f}s "
          f"(incl. capture) = {t_loo_naive / t_loo_cached:.2f}x faster  (max |diff| {gap:.1e})")

    # ---- SLEB greedy
    steps = args.greedy_steps

    def greedy_cached():
        cache = ActivationCache(model, arch, ids, batch_size=batch_size)
        order = []
        for _ in range(steps):
            losses = {u: cache.loss([u]) for u in range(layers) if u not in order}
            pick = min(losses, key=losses.get)
            cache.commit(pick)
            order.append(pick)
        return order

    def greedy_naive():
        order = []
        for _ in range(steps):
            losses = {u: cache.naive_loss(order + [u]) for u in range(layers) if u not in order}
            order.append(min(losses, key=losses.get))
        return order

    cache.reset()
    t_g_cached, order_cached = timed(greedy_cached, args.device)
    t_g_naive, order_naive = timed(greedy_naive, args.device)
    print(f"[greedy, {steps} steps] naive {t_g_naive:.2f}s | prefix cache {t_g_cached:.2f}s = "
          f"{t_g_naive / t_g_cached:.2f}x faster  (same order: {order_cached == order_naive}, {order_cached})")


if __name__ == "__main__":
    main()
