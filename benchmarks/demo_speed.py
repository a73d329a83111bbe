"""The demo's wall time with a shared prefill per sample vs one prefill per cell, in one process.

Runs :func:`~kvpress_lab.benchmarks.demo.run_demo` (default grid: 54 cells) ``--repeats`` times
in each setting, interleaved (shared, alone, shared, alone, ...), on one loaded model, and
reports the medians, their ratio, and whether both settings gave the same answers (they must:
sharing changes timings only).

- ``shared``: ``kvpress-lab demo`` as it runs by default (``--share-prefill 16``);
- ``alone``: ``kvpress-lab demo --no-share-prefill`` (every cell prefills on its own, as the demo
  did before shared prefills).

Run: ``OMP_NUM_THREADS=1 taskset -c 0 python -m kvpress_lab.benchmarks.demo_speed --repeats 1``
(about 6 minutes on one core; the model load is outside the timings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

__all__ = ["measure", "main"]

_ANSWER_FIELDS = ("recipe", "budget", "length", "depth", "output", "correct", "kv_bytes")


def measure(repeats: int, model_name: str | None = None, *, model=None, tokenizer=None, **grid) -> dict:
    """Seconds per setting (lists and medians), the shared/alone ratio of the medians, and answer agreement.

    ``model`` / ``tokenizer``: an already loaded model (else ``model_name`` or the embedded one is
    loaded); ``grid``: :func:`~kvpress_lab.benchmarks.demo.run_demo` grid options (``lengths``,
    ``depths``, ``budgets``, ``recipes``), the demo's defaults when absent.
    """
    import torch

    from kvpress_lab.benchmarks.demo import run_demo
    from kvpress_lab.benchmarks.shared_generation import DEFAULT_SHARE
    from kvpress_lab.models import load_model

    if model is None or tokenizer is None:
        model, tokenizer = load_model(model_name) if model_name else load_model()
    settings = {"shared": DEFAULT_SHARE, "alone": None}
    times: dict[str, list[float]] = {name: [] for name in settings}
    answers: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(repeats):
            for name, share in settings.items():
                start = time.perf_counter()
                result = run_demo(model_name, out, model=model, tokenizer=tokenizer, progress=False, echo=False,
                                  share=share, **grid)
                times[name].append(time.perf_counter() - start)
                answers.setdefault(name, [{k: row.get(k) for k in _ANSWER_FIELDS} for row in result.rows])
                print(f"repeat {repeat + 1}/{repeats} {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "repeats": repeats, "threads": torch.get_num_threads(), "cells": len(answers["shared"]),
        "seconds": times, "median_s": medians, "shared_over_alone": medians["shared"] / medians["alone"],
        "same_answers": answers["shared"] == answers["alone"],  # run_needle returns rows in grid order either way
    }


def main(argv: list[str] | None = None) -> int:
    """Print the measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of each setting (default 1)")
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded model)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be an integer >= 1, got {args.repeats}")
    print(json.dumps(measure(args.repeats, args.model), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
