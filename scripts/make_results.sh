#!/usr/bin/env bash
# Regenerate every result file and figure of the documentation's results page (docs/explanation/results.rst)
# into results/docs/, on the embedded SmolLM2-135M-Instruct (CPU by default; --device cuda also works).
#
#   bash scripts/make_results.sh            # every step but ruler and scaling (about 30-60 min on 2 CPU cores)
#   bash scripts/make_results.sh funnel     # one step: needle | agnostic | curves | funnel | speed | ruler |
#                                           #           leaderboard | scaling
#   bash scripts/make_results.sh ruler leaderboard scaling   # the RULER leaderboard (hours on one core) and the
#                                           # scaling curves (needs a quiet core: timings)
#
# Each result file records the command, versions and machine in its "meta" record.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KVPRESS_LAB_BIN:-.venv/bin}
OUT=${RESULTS_DIR:-results/docs}
mkdir -p "$OUT"
steps=${*:-needle agnostic curves funnel speed leaderboard}

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
    ruler)     # lm-eval's offline RULER tasks x every method preset (resumable: rerun to finish an interrupted run)
      OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$BIN/kvpress-lab" eval results/docs/ruler/eval.yaml ;;
    leaderboard)  # the results page's tables and figures from the committed result files (seconds)
      "$BIN/python" -m kvpress_lab.benchmarks.leaderboard "$OUT" ;;
    scaling)   # prefill time, peak memory, decode ms/step vs prompt length: full / one-shot / chunked (one core)
      OMP_NUM_THREADS=1 "$BIN/python" -m kvpress_lab.benchmarks.scaling --lengths 1024,2048,4096,8192,16384,32768 \
        --full-up-to "${FULL_UP_TO:-32768}" --budget 128 --chunk 512 --out "$OUT/scaling/scaling.jsonl" ;;
    *) echo "unknown step '$step' (expected needle, agnostic, curves, funnel, speed, ruler, leaderboard or scaling)" >&2
       exit 2 ;;
  esac
done
