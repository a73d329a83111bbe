"""Scaling curves: prefill time, peak process memory and decoding ms/step against the prompt length.

For each length ``T`` three settings, each in a fresh process (:mod:`kvpress_lab.benchmarks.memory`'s
child, so one setting's resident memory never hides the next one's peak): the full cache, one-shot
compression and chunked-prefill compression (``--preset`` at ``--budget`` entries per layer,
chunks of ``--chunk`` tokens). Each prefills a seeded synthetic prompt of ``T`` tokens and then
decodes ``--decode-tokens`` tokens greedily; the row records ``prefill_s``, ``peak_rss_mib`` (the
whole process, weights included), ``prefill_peak_rss_mib`` (its growth during the prefill, after
an unmeasured 8-token warm-up forward), the
KV bytes and the median decoding step (``step_ms_last``), plus the machine's load averages before
and after (timings on a shared machine are only as good as its quietest core).

Lengths beyond a model's trained context are fine for a *cost* measurement: the arithmetic and
the memory do not depend on what the positions mean.

Usage::

    python -m kvpress_lab.benchmarks.scaling --lengths 1024,2048,4096,8192,16384,32768 \\
        --out results/docs/scaling/scaling.jsonl          # then --plot to draw the figure

Never run in CI (a 32K full-cache prefill takes minutes on a CPU core).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["SETTINGS", "measure", "plot_scaling", "scaling_csv", "main"]

#: The settings of :func:`kvpress_lab.benchmarks.memory.settings` with one chunk size: full, oneshot, chunked C.
SETTINGS = ("full", "oneshot", "chunked")


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(length: int, setting: int, *, preset: str, budget: int, chunk: int, decode_tokens: int,
            model: str, seed: int = 0) -> dict[str, Any]:
    """One setting (index into :data:`SETTINGS`) at ``length`` tokens, in a fresh process; its row."""
    options = {"model": model, "device": "cpu", "device_map": None, "dtype": "float32", "attn": "sdpa", "seed": seed,
               "length": length, "preset": preset, "budget": budget, "chunks": [chunk], "decode_budget": None,
               "compress_every": None, "decode_tokens": decode_tokens, "warm_up": True}
    before = _loadavg()
    result = subprocess.run([sys.executable, "-m", "kvpress_lab.benchmarks.memory", json.dumps(options), str(setting)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{SETTINGS[setting]} at {length} tokens failed: "
                           f"{(result.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    return {**row, "kind": SETTINGS[setting], "loadavg_before": before, "loadavg_after": _loadavg()}


def scaling_csv(rows: Sequence[dict[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
    """The table of the results page: one line per length and setting."""
    import csv

    path = pathlib.Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["T (tokens)", "setting", "prefill (s)", "peak RSS (MiB)", "RSS growth in prefill (MiB)",
                         "KV after prefill (MiB)", "decode (ms/step)", "load avg (1 min) before/after"])
        for r in sorted(rows, key=lambda r: (r["length"], SETTINGS.index(r["kind"]))):
            writer.writerow([r["length"], r["setting"], f"{r['prefill_s']:.2f}", f"{r['peak_rss_mib']:.0f}",
                             f"{r['prefill_peak_rss_mib']:.0f}", f"{r['prefill_final_kv_mib']:.1f}",
                             f"{r['step_ms_last']:.1f}", f"{r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f}"])
    return path


def plot_scaling(rows: Sequence[dict[str, Any]], out_path: str | pathlib.Path, title: str) -> pathlib.Path:
    """Three panels against T (log-log): prefill time, peak process memory, decoding ms/step; one line per setting."""
    from kvpress_lab.benchmarks.plot import OKABE_ITO, _pyplot, _save

    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(11.5, 3.8), constrained_layout=True)
    styles = {"full": (OKABE_ITO[0], "o", "--"), "oneshot": (OKABE_ITO[1], "s", "-"), "chunked": (OKABE_ITO[2], "^", "-")}
    panels = (("prefill_s", "prefill time (s)"), ("peak_rss_mib", "peak process memory (MiB)"),
              ("step_ms_last", "decoding (ms/step)"))
    for axis, (key, label) in zip(axes, panels):
        for kind in SETTINGS:
            points = sorted((r["length"], r[key]) for r in rows if r["kind"] == kind and r.get(key) is not None)
            if not points:
                continue
            colour, marker, line = styles[kind]
            shown = next(r["setting"] for r in rows if r["kind"] == kind)
            axis.plot([p[0] for p in points], [p[1] for p in points], color=colour, marker=marker, linestyle=line,
                      label=shown)
        axis.set_xscale("log", base=2)
        if key == "prefill_s":
            axis.set_yscale("log")
        lengths = sorted({r["length"] for r in rows})
        axis.set_xticks(lengths, [f"{t // 1024}K" for t in lengths])
        axis.minorticks_off()
        axis.set_xlabel("prompt length T (tokens)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    return _save(figure, out_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvpress_lab.benchmarks.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768", help="prompt lengths, comma-separated")
    parser.add_argument("--full-up-to", type=int, help="measure full and one-shot only up to this length (cost)")
    parser.add_argument("--preset", default="snapkv")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default="results/scaling/scaling.jsonl")
    parser.add_argument("--plot", action="store_true", help="only draw the figure and table from --out")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if not args.plot:
        from kvpress_lab.benchmarks.results import append_jsonl, run_metadata

        out.parent.mkdir(parents=True, exist_ok=True)
        done = {(r["length"], r["kind"]) for r in _rows(out)} if out.exists() else set()
        if not out.exists():
            meta = run_metadata("scaling", args.model, {}, seed=0, device="cpu", dtype="float32",
                                attn_implementation="sdpa",
                                config={k: getattr(args, k) for k in ("lengths", "full_up_to", "preset", "budget",
                                                                      "chunk", "decode_tokens")})
            append_jsonl(out, [{"type": "meta", **meta, "threads": os.environ.get("OMP_NUM_THREADS")}])
        for length in (int(t) for t in args.lengths.split(",")):
            for index, kind in enumerate(SETTINGS):
                if (length, kind) in done or (kind != "chunked" and args.full_up_to and length > args.full_up_to):
                    continue
                start = time.perf_counter()
                row = measure(length, index, preset=args.preset, budget=args.budget, chunk=args.chunk,
                              decode_tokens=args.decode_tokens, model=args.model)
                append_jsonl(out, [{"type": "result", **row}])
                print(f"T={length} {row['setting']}: prefill {row['prefill_s']:.2f} s, peak RSS {row['peak_rss_mib']:.0f} "
                      f"MiB, decode {row['step_ms_last']:.1f} ms/step, load {row['loadavg_before']} -> "
                      f"{row['loadavg_after']} ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = _rows(out) if out.exists() else []
    if not rows:
        raise SystemExit(f"{out} has no result rows to draw (run without --plot first, or check --out).")
    print(f"Wrote {scaling_csv(rows, out.with_suffix('.csv'))}")
    title = (f"Cost against prompt length: SmolLM2-135M-Instruct, CPU, one thread; {args.preset} at budget "
             f"{args.budget}, chunks of {args.chunk}")
    print(f"Wrote {plot_scaling(rows, out.with_suffix('.png'), title)}")
    return 0


def _rows(path: pathlib.Path) -> list[dict[str, Any]]:
    from kvpress_lab.benchmarks.results import read_jsonl

    return [r for r in read_jsonl(path) if r.get("type") == "result"]


if __name__ == "__main__":
    raise SystemExit(main())
