"""Attention-only pruning vs whole layers at the same parameter budget, on SmolLM2-135M-Instruct (issue: sub-layer).

Removes 20% and 33% of the attention sub-layers (`--granularity attention`, DeciLM / Nemotron-NAS export) and, for
each, the number of whole layers with at least as many parameters; every model goes through the same evaluation
as benchmarks/quality.py (lm-eval on the local copies of hellaswag, arc_easy, piqa, boolq, openbookqa; WikiText-2
test perplexity) and the table adds the parameter count and the KV-cache bytes per token.

    python benchmarks/sublayer.py [--fractions 0.2,0.33] [--limit 200] [--metric bi] [--block-metric angular]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import header, run_plan, smollm2, table  # noqa: E402


def parameter_shapes(model: str) -> tuple[int, int, int]:
    """(layers, parameters of one attention sub-layer, parameters of one whole layer) from the config alone."""
    from transformers import AutoConfig

    kwargs = {"gguf_file": Path(model).name} if model.endswith(".gguf") else {}
    config = AutoConfig.from_pretrained(str(Path(model).parent) if kwargs else model, **kwargs)
    h, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = config.num_key_value_heads * head_dim
    attention = h * heads * head_dim * 2 + 2 * h * kv + h  # q, o, k, v, input norm
    mlp = 3 * h * config.intermediate_size + h  # gate, up, down, post-attention norm
    return config.num_hidden_layers, attention, attention + mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--fractions", default="0.2,0.33")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--metric", default="bi", help="attention sub-layer metric")
    parser.add_argument("--block-metric", default="angular", help="whole-layer metric for the same budget")
    parser.add_argument("--heal", default="none")
    parser.add_argument("--seed-calibration", default="same", help=argparse.SUPPRESS)
    parser.add_argument("--ppl-tokens", type=int, default=16384)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = args.model or str(smollm2())
    layers, attention, whole = parameter_shapes(model)
    plan = []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        n_attn = round(fraction * layers)
        n_layers = math.ceil(n_attn * attention / whole)
        plan.append((n_attn, f"granularity=attention+metric={args.metric}+heal={args.heal}"))
        plan.append((n_layers, f"metric={args.block_metric}+heal={args.heal}"))
    print(f"attention sub-layer: {attention / 1e6:.2f}M parameters, whole layer: {whole / 1e6:.2f}M; plan: {plan}",
          file=sys.stderr)
    rows, base = run_plan(model, plan, args, "sublayer-")
    print(header(model, args))
    print(f"one attention sub-layer = {attention / 1e6:.2f}M parameters, one whole layer = {whole / 1e6:.2f}M; "
          "`drop` counts attention sub-layers for the attention rows and whole layers otherwise\n")
    print(table(rows, base))


if __name__ == "__main__":
    main()
