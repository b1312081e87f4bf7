#!/usr/bin/env bash
# Stage-2 training on one GPU at a real shape, padded vs packed vs token-budget batches, bf16 (autocast): tokens/s,
# samples/s, MFU, peak memory and the padding fraction, for LoRA and for a fully trained LLM. Random weights:
# SigLIP-base-shaped vision tower (12 layers, 224 px, patch 16), Qwen2-0.5B-shaped LLM (24 layers, hidden 896, 14/2
# heads, 151,936 vocab), 64 visual tokens per clip, the instruction-like length mix of benchmarks/bench_packing.py (b),
# rows of 4096 tokens (budget: one such row per batch, about the token slots of a padded batch of 8).
# The LLM's attention: flash_attention_2 (packed rows as one varlen row) when flash_attn imports, else sdpa.
#
#     bash benchmarks/gpu.sh            # about 5 minutes on an H100; prints the card's name first
#
# Without CUDA it stops at once with a message and exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "benchmarks/gpu.sh: $PY cannot import torch; run make install or set PY=/path/to/python" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "benchmarks/gpu.sh: no CUDA device visible to torch; this benchmark needs a GPU (nothing was run)" >&2
  exit 2
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'card: {p.name}, {p.total_memory / 2**30:.0f} GiB')"
ATTN=sdpa
if "$PY" -c "import flash_attn" 2>/dev/null; then ATTN=flash_attention_2; fi
echo "attention: $ATTN"
COMMON=(--case mix --device cuda --dtype bf16 --mfu --steps 5 --batches 2 --llm-layers 24 --vision-layers 12
        --image-size 224 --vocab 151936 --mix-max-tokens 4096 --mix-rows 1 --attn "$ATTN")
echo "== LoRA (rank 16 on q/k/v/o), fusion + projection trained"
timeout 240 "$PY" benchmarks/bench_packing.py "${COMMON[@]}"
echo "== full LLM trained"
timeout 240 "$PY" benchmarks/bench_packing.py "${COMMON[@]}" --full
