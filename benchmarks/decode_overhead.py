"""Decoding overhead of compressed caches: two controlled ratios, measured in one run.

For each prompt length ``T`` one seeded synthetic prompt is prefilled once and compressed to
``--budget`` entries per layer (SnapKV scores, the ``gather`` executor: every KV head keeps the
same entries count). From that one compressed cache three caches holding *exactly the same
entries* are made:

* **plain** — transformers' ``DynamicCache`` whose layers hold the kept keys and values (what
  kvpress decodes on); new tokens get their true positions through ``position_ids``; decoded
  with this project's decoding hooks removed (plain transformers);
* **dense** — the compressed cache itself (:class:`~kvpress_lab.cache_layers.CompressedLayer`);
* **ragged** — the same entries in :class:`~kvpress_lab.cache_layers.RaggedLayer` (per-head
  storage, here with equal counts per head), the layer the ``ragged`` executor builds.

Each repeat decodes ``--steps`` one-token steps (the same tokens, the same ``position_ids``) on
a fresh copy of every cache, in a rotating order (plain, dense, ragged; dense, ragged, plain;
...), and keeps the mean seconds per step, on two clocks: wall time, and the CPU time of this
process (``time.process_time``, all its threads), which other processes on a shared machine
disturb far less. The table reports, per ``T`` and clock, the medians over the repeats and the
two ratios the decoding path is judged by: ``dense / plain`` (what the layer protocol costs over
a plain cache) and ``ragged / dense`` (what per-head storage costs at the same kept sets), as the
ratio of the medians and the median of the per-repeat ratios. It also counts the attention masks
built per decoding step (calls to transformers' mask builder and to the ragged layers' mask
builder).

Run: ``python -m kvpress_lab.benchmarks.decode_overhead --lengths 2048 4096 --budget 128 --steps 16 --repeats 7``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["make_caches", "decode_seconds", "count_masks", "measure", "main"]

VARIANTS = ("plain", "dense", "ragged")
CLOCKS = ("wall", "cpu")


def make_caches(model, tokenizer, length: int, budget: int) -> dict[str, object]:
    """``{"plain", "dense", "ragged"}`` caches holding the same kept entries of one ``length``-token prompt."""
    from transformers.cache_utils import DynamicLayer

    from kvpress_lab import Recipe
    from kvpress_lab.analysis.synthetic import synthetic_text
    from kvpress_lab.cache_layers import CompressedLayer, RaggedLayer

    ids = tokenizer(synthetic_text(length, seed=0), return_tensors="pt").input_ids[:, :length]
    if ids.shape[1] < length:
        raise ValueError(f"the synthetic prompt has {ids.shape[1]} tokens, fewer than --lengths {length}.")
    with torch.no_grad():
        dense = Recipe(budget=budget).prefill(model, ids)
    plain = copy.deepcopy(dense)
    ragged = copy.deepcopy(dense)
    for attr in ("_kvpress_lab_compressed", "_kvpress_lab_tokens"):
        if hasattr(plain, attr):
            delattr(plain, attr)  # a plain cache: the decoding hooks leave it alone
    for idx, layer in enumerate(dense.layers):
        if not isinstance(layer, CompressedLayer):
            raise TypeError(f"layer {idx} is a {type(layer).__name__}; expected every layer compressed by 'gather'.")
        if not bool(layer.slot_valid.all()):
            raise ValueError("one unpadded row keeps no filler slot; got one (budget above the prompt length?).")
        kept = DynamicLayer()
        kept.lazy_initialization(layer.keys, layer.values)
        kept.keys, kept.values = layer.keys.clone(), layer.values.clone()
        plain.layers[idx] = kept
        valid = layer.slot_valid[:, None, :].expand(-1, layer.keys.shape[1], -1)  # (B, Hkv, P): same entries per head
        ragged.layers[idx] = RaggedLayer.from_dense(layer.keys, layer.values, valid, layer.logical_length)
    return {"plain": plain, "dense": dense, "ragged": ragged, "length": int(ids.shape[1])}


def decode_seconds(model, cache, tokens: torch.Tensor, start: int) -> list[tuple[float, float]]:
    """``(wall, cpu)`` seconds of each one-token step decoding ``tokens`` ``(S,)`` at positions ``start, start + 1, ...``."""
    times = []
    with torch.no_grad():
        for step, token in enumerate(tokens.tolist()):
            ids = torch.tensor([[token]])
            positions = torch.tensor([[start + step]])
            wall, cpu = time.perf_counter(), time.process_time()
            model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def count_masks(step: Callable[[], object]) -> int:
    """Attention masks built while ``step()`` runs: transformers' mask builder plus the ragged layers' own."""
    from kvpress_lab.cache_layers import protocol, ragged

    calls = [0]
    patched = []

    def counting(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[0] += 1
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)
        patched.append((owner, name, original))

    counting(protocol, "create_causal_mask")
    for name in ("dense_view_mask", "_build_mask"):
        if hasattr(ragged.RaggedLayer, name):
            counting(ragged.RaggedLayer, name)
    try:
        step()
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
    return calls[0]


def measure(model, tokenizer, lengths: Sequence[int], budget: int, steps: int, repeats: int, seed: int = 0) -> list[dict]:
    """One row per ``T`` and clock (wall, cpu): median ms per step of each variant, the two ratios, masks per step."""
    from kvpress_lab.engine.model_hooks import disable_compressed_decoding, enable_compressed_decoding

    def run(name: str, cache, steps_tokens: torch.Tensor, start: int) -> list[tuple[float, float]]:
        if name == "plain":
            disable_compressed_decoding(model)  # plain transformers, no hooks at all
        else:
            enable_compressed_decoding(model)
        return decode_seconds(model, cache, steps_tokens, start)

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        caches = make_caches(model, tokenizer, length, budget)
        tokens = torch.randint(3, model.config.vocab_size, (steps,), generator=generator)
        start = caches["length"]
        for name in VARIANTS:
            run(name, copy.deepcopy(caches[name]), tokens[:2], start)  # warm-up
        per_step: dict[tuple[str, str], list[float]] = {(clock, name): [] for clock in CLOCKS for name in VARIANTS}
        for repeat in range(repeats):
            order = VARIANTS[repeat % 3:] + VARIANTS[: repeat % 3]
            for name in order:
                cache = copy.deepcopy(caches[name])
                times = run(name, cache, tokens, start)
                for index, clock in enumerate(CLOCKS):
                    per_step[clock, name].append(statistics.mean(t[index] for t in times))
        masks = {}
        for name in VARIANTS:
            cache = copy.deepcopy(caches[name])
            masks[name] = count_masks(lambda name=name, cache=cache: run(name, cache, tokens[:1], start))
        enable_compressed_decoding(model)
        for clock in CLOCKS:
            med = {name: statistics.median(per_step[clock, name]) for name in VARIANTS}
            pairs = {name: per_step[clock, name] for name in VARIANTS}
            rows.append({
                "length": length, "clock": clock, "budget": budget, "steps": steps, "repeats": repeats,
                **{f"{name}_ms": 1e3 * med[name] for name in VARIANTS},
                "dense/plain": med["dense"] / med["plain"],
                "dense/plain (paired)": statistics.median(d / p for d, p in zip(pairs["dense"], pairs["plain"])),
                "ragged/dense": med["ragged"] / med["dense"],
                "ragged/dense (paired)": statistics.median(r / d for r, d in zip(pairs["ragged"], pairs["dense"])),
                **{f"masks/step {name}": masks[name] for name in VARIANTS},
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table (one row per prompt length)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096], help="prompt tokens (default 2048 4096)")
    parser.add_argument("--budget", type=int, default=128, help="entries kept per layer and head (default 128)")
    parser.add_argument("--steps", type=int, default=16, help="one-token decoding steps per run (default 16)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (default 7)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model (default: the embedded one)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (default sdpa)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from kvpress_lab.models import load_model

    model, tokenizer = load_model(args.model, attn_implementation=args.attn)
    rows = measure(model, tokenizer, args.lengths, args.budget, args.steps, args.repeats)
    print(f"{args.model} ({args.attn}, {torch.get_num_threads()} threads), budget {args.budget}: ms per one-token "
          f"decoding step, medians of {args.repeats} interleaved repeats of {args.steps} steps")
    header = (f"{'T':>6} {'clock':>5} {'plain ms':>9} {'dense ms':>9} {'ragged ms':>10} {'dense/plain':>12} {'(paired)':>9} "
              f"{'ragged/dense':>13} {'(paired)':>9} {'masks/step p/d/r':>17}")
    print(header)
    for row in rows:
        masks = "/".join(str(row[f"masks/step {name}"]) for name in VARIANTS)
        print(f"{row['length']:>6} {row['clock']:>5} {row['plain_ms']:>9.2f} {row['dense_ms']:>9.2f} {row['ragged_ms']:>10.2f} "
              f"{row['dense/plain']:>12.3f} {row['dense/plain (paired)']:>9.3f} {row['ragged/dense']:>13.3f} "
              f"{row['ragged/dense (paired)']:>9.3f} {masks:>17}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
