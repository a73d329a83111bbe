"""H2O's cost on the embedded model: (prefill + compression) / plain prefill, in one process.

One prompt of ``--length`` tokens (seeded synthetic text) is prefilled ``--repeats`` times in
each setting, interleaved (plain, h2o, plain, h2o, ...; with ``--with-old``, also the previous
H2O scorer, which built every query block's attention over all ``T`` keys, causal mask
included, before the column sums). Medians are reported, with each H2O setting's ratio to the
plain prefill of the same run:

- ``plain``: ``model(ids, use_cache=True, logits_to_keep=1)``, no recipe (a cache, and the last
  position's logits, as ``recipe.prefill`` computes);
- ``h2o``: ``Recipe.preset("h2o", budget=...).prefill(model, ids)`` (prefill, scoring of every
  layer, eviction).

Run: ``python -m kvpress_lab.benchmarks.h2o_speed --length 4096 --repeats 3 --with-old``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

__all__ = ["old_h2o_score", "measure", "main"]


def old_h2o_score(self, view) -> torch.Tensor:
    """The H2O scorer before the causal-block rewrite: every block of queries against all ``T`` keys."""
    from kvpress_lab.attention import attention_probs, reduce_groups

    keys = view.keys.float()
    total = keys.new_zeros(view.batch_size, view.num_query_heads, view.seq_len)
    for start in range(0, view.seq_len, self.chunk_size):
        stop = min(start + self.chunk_size, view.seq_len)
        probs = attention_probs(view.queries(start, stop), keys, view.valid, start, view.scaling)  # (B, Hq, Q, T)
        total += probs.sum(dim=2)
    return reduce_groups(total, view.num_kv_heads, "mean")


@contextlib.contextmanager
def _old_scorer():
    from kvpress_lab.scorers.h2o import H2OScorer

    new = H2OScorer.score
    H2OScorer.score = old_h2o_score
    try:
        yield
    finally:
        H2OScorer.score = new


def measure(length: int, budget: int, repeats: int, with_old: bool, model_name: str | None = None) -> dict:
    """Seconds per setting (lists and medians) and the ratios of the medians to the plain prefill."""
    from kvpress_lab import Recipe
    from kvpress_lab.analysis.synthetic import synthetic_text
    from kvpress_lab.engine.prefill import forward_cache
    from kvpress_lab.models import load_model

    model, tokenizer = load_model(model_name) if model_name else load_model()
    ids = tokenizer(synthetic_text(length, seed=0), return_tensors="pt")["input_ids"][:, :length]
    recipe = Recipe.preset("h2o", budget=budget)
    settings = {
        "plain": lambda: forward_cache(model, ids),
        "h2o": lambda: recipe.prefill(model, ids),
    }
    if with_old:
        def old():
            with _old_scorer():
                return recipe.prefill(model, ids)
        settings["h2o_old"] = old
    times: dict[str, list[float]] = {name: [] for name in settings}
    with torch.no_grad():
        recipe.prefill(model, ids[:, :256])  # warm-up (and the decoding hooks prefill leaves on the model)
        for _ in range(repeats):
            for name, run in settings.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                print(f"{name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)  # progress
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "length": int(ids.shape[1]), "budget": budget, "repeats": repeats, "threads": torch.get_num_threads(),
        "seconds": times, "median_s": medians,
        "ratio_to_plain": {name: medians[name] / medians["plain"] for name in medians if name != "plain"},
    }


def main(argv: list[str] | None = None) -> int:
    """Print the measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096, help="prompt tokens (default 4096)")
    parser.add_argument("--budget", type=int, default=128, help="h2o budget per layer (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--with-old", action="store_true", help="also time the previous H2O scorer")
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded model)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.length, args.budget, args.repeats, args.with_old, args.model), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
