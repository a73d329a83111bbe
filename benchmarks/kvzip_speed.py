"""KVzip's cost on the embedded model: (prefill + reconstruction scoring) / plain prefill, in one process.

One prompt of ``--length`` tokens (seeded synthetic text) is prefilled ``--repeats`` times in
each setting, interleaved (plain, kvzip, plain, kvzip, ...), on the threads given by
``--threads``. Medians are reported, with each setting's ratio to the plain prefill of the same
run:

- ``plain``: the prefill alone (a cache and the last position's logits, as ``recipe.prefill``);
- ``kvzip``: ``Recipe.preset("kvzip", compression_ratio=...).prefill(model, ids)``: prefill, the
  reconstruction forwards with the scores computed inside their attention, global allocation,
  eviction;
- ``kvzip_reference`` (``--with-reference``): the same with ``scorer_kwargs={"fuse": False}``, the
  attention as usual and the scores from a separate softmax afterwards.

The kept entries of ``kvzip`` and ``kvzip_reference`` are compared (Jaccard over every layer and
KV head). With ``--kvpress-python`` (the side environment of ``scripts/kvpress_env.sh``), the same
ratio is measured for kvpress's ``KVzipPress`` by :mod:`kvpress_lab.benchmarks.kvpress_side` on
the same weights and ids, right after.

Run: ``python -m kvpress_lab.benchmarks.kvzip_speed --length 2048 --repeats 3 --with-reference``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

__all__ = ["measure", "kept_jaccard", "main"]


def kept_jaccard(first: dict, second: dict) -> float:
    """Mean Jaccard index of two sessions' selections (``{layer: Selection}``) over every layer and KV head."""
    scores = []
    for layer, a in first.items():
        b = second[layer]
        for row in range(a.indices.shape[0]):
            for head in range(a.indices.shape[1]):
                x = set(a.indices[row, head][a.valid[row, head]].tolist())
                y = set(b.indices[row, head][b.valid[row, head]].tolist())
                scores.append(len(x & y) / max(len(x | y), 1))
    return sum(scores) / max(len(scores), 1)


def _selections(model, recipe, ids) -> dict:
    with torch.no_grad(), recipe.apply(model, record_indices=True) as session:
        model.model(input_ids=ids, use_cache=True)
    return dict(session.selections)


def measure(length: int, ratio: float, repeats: int, with_reference: bool, model_name: str | None = None) -> dict:
    """Seconds per setting (lists and medians), the ratios of the medians to the plain prefill, and the kept-set agreement."""
    from kvpress_lab import Recipe
    from kvpress_lab.analysis.synthetic import synthetic_text
    from kvpress_lab.engine.prefill import forward_cache
    from kvpress_lab.models import load_model

    model, tokenizer = load_model(model_name) if model_name else load_model()
    ids = tokenizer(synthetic_text(length, seed=0), return_tensors="pt")["input_ids"][:, :length]
    recipe = Recipe.preset("kvzip", compression_ratio=ratio)
    reference = Recipe.preset("kvzip", compression_ratio=ratio, scorer_kwargs={"fuse": False})
    settings = {"plain": lambda: forward_cache(model, ids), "kvzip": lambda: recipe.prefill(model, ids)}
    if with_reference:
        settings["kvzip_reference"] = lambda: reference.prefill(model, ids)
    times: dict[str, list[float]] = {name: [] for name in settings}
    with torch.no_grad():
        recipe.prefill(model, ids[:, :256])  # warm-up
        for _ in range(repeats):
            for name, run in settings.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                print(f"{name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)  # progress
    medians = {name: statistics.median(values) for name, values in times.items()}
    out = {
        "length": int(ids.shape[1]), "compression_ratio": ratio, "repeats": repeats, "threads": torch.get_num_threads(),
        "seconds": times, "median_s": medians,
        "ratio_to_plain": {name: medians[name] / medians["plain"] for name in medians if name != "plain"},
    }
    if with_reference:
        out["kept_jaccard_fused_vs_reference"] = kept_jaccard(_selections(model, recipe, ids), _selections(model, reference, ids))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048, help="prompt tokens (default 2048)")
    parser.add_argument("--ratio", type=float, default=0.5, help="kvzip compression ratio (default 0.5)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--with-reference", action="store_true",
                        help="also time the unfused reference scoring, and compare the kept entries")
    parser.add_argument("--kvpress-python", default=None,
                        help="python of the kvpress side environment: also measure kvpress's KVzipPress ratio")
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.length, args.ratio, args.repeats, args.with_reference, args.model)
    if args.kvpress_python:
        from kvpress_lab.benchmarks.kvpress_timing import kvpress_kvzip_ratio

        result["kvpress"] = kvpress_kvzip_ratio(args.kvpress_python, args.length, args.ratio, args.repeats, args.threads,
                                                args.model)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
