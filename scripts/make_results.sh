#!/usr/bin/env bash
# Regenerate every result file and figure of the documentation's results page (docs/explanation/results.rst)
# into results/docs/, on the embedded SmolLM2-135M-Instruct (CPU by default; --device cuda also works).
#
#   bash scripts/make_results.sh            # everything (about 30-60 min on 2 CPU cores)
#   bash scripts/make_results.sh funnel     # one step: needle | agnostic | curves | funnel | speed
#
# Each result file records the command, versions and machine in its "meta" record.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KVPRESS_LAB_BIN:-.venv/bin}
OUT=${RESULTS_DIR:-results/docs}
mkdir -p "$OUT"
steps=${*:-needle agnostic curves funnel speed}

for step in $steps; do
  case $step in
    needle)    # query-aware needle: heatmap (demo defaults: lengths 1024,2048; depths 0.1,0.5,0.9; budgets 64,128)
      "$BIN/kvpress-lab" demo --no-progress --out-dir "$OUT/needle-query-aware" ;;
    agnostic)  # query-agnostic needle (the question comes after compression): heatmap
      "$BIN/kvpress-lab" bench needle --mode query-agnostic --lengths 1024,2048 --depths 0.1,0.5,0.9 \
        --ratios 0.5,0.75 --budgets 64,128 \
        --recipes full,streamingllm,streamingllm-rerotated,snapkv,keydiff,lagkv,compactor,cur,expected-attention,kvzip,criticalkv,chunkkv,snapkv-merge \
        --no-progress --out "$OUT/needle-query-agnostic/needle.jsonl"
      "$BIN/kvpress-lab" plot "$OUT/needle-query-agnostic/needle.jsonl" --out "$OUT/needle-query-agnostic/needle_heatmap.png" ;;
    curves)    # accuracy vs budget from the two needle files above
      "$BIN/python" scripts/results_figures.py curves "$OUT/needle-query-aware/needle.json" "$OUT/needle-query-aware/budget_curves.png"
      "$BIN/python" scripts/results_figures.py curves "$OUT/needle-query-agnostic/needle.jsonl" "$OUT/needle-query-agnostic/budget_curves.png"
      for mode in needle-query-aware/needle.json needle-query-agnostic/needle.jsonl; do
        "$BIN/python" scripts/results_figures.py table "$OUT/$mode" "$OUT/$(dirname "$mode")/summary.csv" correct kv_bytes prefill_s
      done ;;
    funnel)    # per-layer attention entropy and coverage (4 synthetic prompts of 2048 tokens)
      "$BIN/python" scripts/results_figures.py funnel "$OUT/funnel" --length 2048 --prompts 4 ;;
    speed)     # prefill/decoding time, KV bytes and peak memory, median of 3 runs
      "$BIN/kvpress-lab" bench speed --lengths 1024,2048 --budgets 128 --recipes full,pyramidkv,snapkv \
        --repeats 3 --no-progress --out "$OUT/speed/speed.json"
      "$BIN/python" scripts/results_figures.py table "$OUT/speed/speed.json" "$OUT/speed/summary.csv" \
        prefill_s decode_step_s kv_bytes_after peak_rss_mb --by-length ;;
    *) echo "unknown step '$step' (expected needle, agnostic, curves, funnel or speed)" >&2; exit 2 ;;
  esac
done
