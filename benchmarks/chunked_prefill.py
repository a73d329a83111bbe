"""Chunked prefill with compression on the embedded model: peak memory, KV bytes, and what changes.

For one prompt of ``--length`` tokens (seeded synthetic text) and each setting — the full cache,
one-shot compression, and chunked compression for each ``--chunks`` size — a fresh process
prefills once and reports:

* **peak KV bytes during prefill**: the largest cache held after any attention layer's forward,
  all layers counted (what the prompt costs in cache memory at its worst moment);
* **peak extra RSS**: the process's resident-set peak during the prefill minus the resident size
  just before it, sampled every millisecond (everything: weights are loaded before);
* **KV bytes after prefill**, and the prefill's wall time;
* **how the answer changes**: KL divergence of the next-token distribution from the full cache's,
  and whether the top-1 token agrees (chunked scorers see only their chunk's queries).

Run: ``python -m kvpress_lab.benchmarks.chunked_prefill --length 8192 --budget 128 --chunks 256 512``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from kvpress_lab.benchmarks.peak_memory import PeakMemory

__all__ = ["KVPeakProbe", "cache_bytes", "layer_bytes", "layer_entries", "measure_once", "main"]

def layer_bytes(layer) -> int:
    """Bytes one cache layer holds: a compressed layer's ``nbytes()``, else its keys and values."""
    nbytes = getattr(layer, "nbytes", None)
    if callable(nbytes):
        return int(nbytes())
    if getattr(layer, "keys", None) is not None and hasattr(layer.keys, "numel"):
        return 2 * layer.keys.numel() * layer.keys.element_size()
    return 0


def cache_bytes(cache) -> int:
    """Bytes a cache holds, all layers (:func:`layer_bytes`)."""
    return sum(layer_bytes(layer) for layer in cache.layers)


def layer_entries(layer) -> int:
    """Slots one cache layer holds per row and head (``physical_length`` of a compressed layer)."""
    physical = getattr(layer, "physical_length", None)
    if physical is not None:
        return int(physical() if callable(physical) else physical)
    keys = getattr(layer, "keys", None)
    return int(keys.shape[-2]) if keys is not None and hasattr(keys, "shape") and keys.dim() >= 2 else 0


class KVPeakProbe:
    """Forward hooks on every attention layer recording the largest cache held after any of them.

    After each attention layer's forward, that layer's bytes (:func:`layer_bytes`) and slots
    (:func:`layer_entries`) are read; the cache's total is the sum of every layer's last reading
    (layers change only in their own forward, where compression hooks run after this one: it is
    registered first in line).
    ``peak_bytes`` and ``max_entries`` keep the largest seen since the last :meth:`reset`. Use as
    a context manager (hooks removed on exit); one probe follows one cache.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.peak_bytes = 0
        self.max_entries = 0
        self._bytes: dict[int, int] = {}
        self._last: tuple | None = None  # (cache, index) of the last layer read
        self._handles: list = []

    def reset(self) -> None:
        """Start a new phase: forget the peaks seen so far (the peak restarts at the cache's current size)."""
        if self._last is not None:
            self._bytes = {i: layer_bytes(layer) for i, layer in enumerate(self._last[0].layers)}
        self.peak_bytes = sum(self._bytes.values())
        self.max_entries = 0

    def _probe(self, module, args, kwargs, output) -> None:
        cache = kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")
        index = getattr(module, "layer_idx", None)
        if cache is None or index is None or index >= len(cache.layers):
            return
        if self._last is not None and self._last[0] is cache:  # re-read the previous layer: its compression has run
            self._bytes[self._last[1]] = layer_bytes(cache.layers[self._last[1]])
        self._last = (cache, index)
        layer = cache.layers[index]
        self._bytes[index] = layer_bytes(layer)
        self.peak_bytes = max(self.peak_bytes, sum(self._bytes.values()))
        self.max_entries = max(self.max_entries, layer_entries(layer))

    def __enter__(self) -> KVPeakProbe:
        # prepend: read each layer before kvpress_lab's hooks compress it, whenever those were registered
        self._handles = [layer.self_attn.register_forward_hook(self._probe, with_kwargs=True, prepend=True)
                         for layer in self.model.get_decoder().layers]
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._handles:
            self._handles.pop().remove()


def measure_once(length: int, budget: int, preset: str, chunk: int | None, mode: str, model_name: str) -> dict:
    """One prefill of ``mode`` (``full``, ``oneshot`` or ``chunked``); returns the measurements and the logits."""
    import torch

    from kvpress_lab import Recipe
    from kvpress_lab.analysis.synthetic import synthetic_text
    from kvpress_lab.engine.prefill import last_logits_only
    from kvpress_lab.models import load_model

    model, tokenizer = load_model(model_name)
    ids = tokenizer(synthetic_text(length, seed=0), return_tensors="pt")["input_ids"][:, :length]
    probe = KVPeakProbe(model).__enter__()
    recipe = Recipe.preset(preset, budget=budget)
    with torch.no_grad(), PeakMemory(interval_s=0.001) as memory:
        start = time.perf_counter()
        if mode == "full":
            out = model(input_ids=ids, use_cache=True, **last_logits_only(model))  # a cache, as recipe.prefill returns
            cache, logits = out.cache, out.logits[0, -1]
        else:
            cache = recipe.prefill(model, ids[:, :-1], chunk_size=chunk if mode == "chunked" else None)
            logits = model(input_ids=ids[:, -1:], cache=cache, use_cache=True).logits[0, -1]
        seconds = time.perf_counter() - start
    probe.__exit__(None, None, None)
    return {
        "mode": mode, "chunk": chunk, "length": int(ids.shape[1]), "budget": budget, "preset": preset,
        "peak_kv_mib": probe.peak_bytes / 2**20, "final_kv_mib": cache_bytes(cache) / 2**20,
        "peak_extra_rss_mib": memory.peak_extra_mb, "seconds": seconds,
        "log_probs": torch.log_softmax(logits.float(), dim=-1).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    """Print one row per setting, each measured in a fresh process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192, help="prompt tokens (default 8192)")
    parser.add_argument("--budget", type=int, default=128, help="entries per layer (default 128)")
    parser.add_argument("--preset", default="snapkv", help="a chunkable preset (default snapkv)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 512], help="chunk sizes (default 256 512)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model (default: the embedded one)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, chunk = args.child[0], (None if args.child[1] == "-" else int(args.child[1]))
        print(json.dumps(measure_once(args.length, args.budget, args.preset, chunk, mode, args.model)))
        return 0
    import math

    settings = [("full", None), ("oneshot", None)] + [("chunked", c) for c in args.chunks]
    rows = []
    for mode, chunk in settings:
        command = [sys.executable, "-m", "kvpress_lab.benchmarks.chunked_prefill", "--length", str(args.length),
                   "--budget", str(args.budget), "--preset", args.preset, "--model", args.model,
                   "--child", mode, "-" if chunk is None else str(chunk)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(result.stdout.splitlines()[-1]))
    full = rows[0]
    reference = full["log_probs"]
    print(f"{args.model}, T={full['length']}, {args.preset} budget {args.budget}: prefill of each setting in a fresh process")
    print(f"{'setting':>14} {'peak KV MiB':>12} {'(% full)':>9} {'peak +RSS MiB':>14} {'(% full)':>9} "
          f"{'final KV MiB':>13} {'seconds':>8} {'KL vs full':>11} {'top-1 = full':>13}")
    for row in rows:
        kl = sum(math.exp(p) * (p - q) for p, q in zip(reference, row["log_probs"]))
        same = max(range(len(reference)), key=reference.__getitem__) == max(range(len(reference)), key=row["log_probs"].__getitem__)
        name = row["mode"] if row["chunk"] is None else f"chunked {row['chunk']}"
        print(f"{name:>14} {row['peak_kv_mib']:>12.2f} {100 * row['peak_kv_mib'] / full['peak_kv_mib']:>8.1f}% "
              f"{row['peak_extra_rss_mib']:>14.1f} {100 * row['peak_extra_rss_mib'] / max(full['peak_extra_rss_mib'], 1e-9):>8.1f}% "
              f"{row['final_kv_mib']:>13.2f} {row['seconds']:>8.2f} {kl:>11.4f} {str(same):>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
