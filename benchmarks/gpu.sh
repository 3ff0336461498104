#!/usr/bin/env bash
# The device check of issue 22, as one call on a lent CUDA machine (see DEVELOPERS.md, "Environment facts"):
#
#   1. the gpu-marked tests: QLoRA on a 4-bit copy and `--load-in-4bit` on CUDA, outputs equal to the in-memory merge;
#   2. the default `prune --drop 8` on a random Llama-2-7B-shaped bf16 checkpoint (peak = torch.cuda.max_memory_allocated
#      per stage, from layerprune.json) and its pre-flight estimate;
#   3. the same checkpoint with `--load-in-4bit` (NF4, angular, QLoRA, output streamed from the shards).
#
# Before the call, put the wheels the device image lacks in .whl/ (ignored; carry it): bitsandbytes (CUDA build),
# lm-eval and its deps, datasets, gguf, and this project's pins of transformers / huggingface_hub / peft
# (`pip download --no-deps -d .whl ...`; at most 64 MiB travel per call, so split over calls and keep them in /tmp).
# Figures are written under $OUT (default: benchmarks/out/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  pip install --no-deps .whl/*.whl > "$OUT/pip.txt" 2>&1
fi
pip install --no-deps -e . >> "$OUT/pip.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout 240 python -m pytest -m gpu -q -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
tail -3 "$OUT/gpu_tests.txt"
# knobs at their defaults but the calibration and evaluation sizes, as on the CPU table; a GPU runs them in minutes
timeout 420 python benchmarks/memory.py --shape 7b --peer '' --kill-gib 60 --knobs 32,256,20 > "$OUT/default_7b.txt" 2>&1
tail -12 "$OUT/default_7b.txt"
timeout 300 python benchmarks/memory.py --shape 7b --peer '' --kill-gib 60 --knobs 32,256,20 --load-in-4bit \
  > "$OUT/load_in_4bit_7b.txt" 2>&1
tail -12 "$OUT/load_in_4bit_7b.txt"
cp benchmarks/out/memory/pruned-ours/layerprune.json "$OUT/default_7b.layerprune.json" 2>/dev/null
cp benchmarks/out/memory/pruned-ours-4bit/layerprune.json "$OUT/load_in_4bit_7b.layerprune.json" 2>/dev/null
