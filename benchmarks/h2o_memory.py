"""Peak extra memory of the chunked H2O scorer on one layer of the embedded model.

H2O scores each prompt token by the attention it receives from *all* prompt queries. Done
naively that is a ``(Hq, T, T)`` float32 matrix per layer: 2.4 GB for SmolLM2-135M's 9 query
heads at T = 8192. The ``h2o`` scorer works in chunks of queries, so its extra memory is
``O(Hq * T * chunk)``. This benchmark measures it: each chunk size runs in a fresh process that
samples its resident set size every millisecond while scoring layer 0 of the real model on an
8192-token input, and reports the peak increase over the resident size just before scoring.

Run: ``python -m kvpress_lab.benchmarks.h2o_memory --length 8192 --chunks 64 256 1024``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from kvpress_lab.benchmarks.peak_memory import PeakMemory

__all__ = ["measure_once", "main"]

def measure_once(length: int, chunk: int, model_name: str) -> dict:
    """Score layer 0 of ``model_name`` on ``length`` random tokens with ``chunk``; return peak extra bytes."""
    import torch

    from kvpress_lab.engine.families import ModelAdapter
    from kvpress_lab.models import load_model
    from kvpress_lab.scorers.h2o import H2OScorer

    torch.manual_seed(0)
    model, _ = load_model(model_name)
    adapter = ModelAdapter.for_model(model)
    module = adapter.attention[0]
    with torch.no_grad():
        ids = torch.randint(0, model.config.vocab_size, (1, length))
        hidden = adapter.decoder.layers[0].input_layernorm(adapter.decoder.embed_tokens(ids))  # (1, T, hidden)
        cos, sin = adapter.decoder.rotary_emb(hidden, torch.arange(length)[None])
        keys = module.k_proj(hidden).view(1, length, -1, module.head_dim).transpose(1, 2)  # (1, Hkv, T, D)
        keys, _ = sys.modules[type(module).__module__].apply_rotary_pos_emb(keys, keys, cos, sin)
        view = adapter.layer_view(0, hidden, (cos, sin), keys, keys, torch.ones(1, length, dtype=torch.bool), window=8)
        scorer = H2OScorer(chunk_size=chunk)
        with PeakMemory(interval_s=0.001) as memory:
            start = time.perf_counter()
            scores = scorer.score(view)
            seconds = time.perf_counter() - start
    heads = adapter.num_query_heads
    return {
        "length": length,
        "chunk": chunk,
        "peak_extra_mib": memory.peak_extra_mb,
        "one_chunk_of_probs_mib": heads * chunk * length * 4 / 2**20,
        "full_txt_matrix_mib": heads * length * length * 4 / 2**20,
        "seconds": seconds,
        "finite": bool(torch.isfinite(scores).all()),
    }


def main(argv: list[str] | None = None) -> int:
    """Print a table of peak extra memory per chunk size (each measured in a fresh process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_once(args.length, args.chunks[0], args.model)))
        return 0
    print(f"H2O scorer, layer 0 of {args.model}, T={args.length}: peak extra RSS vs chunk size")
    print(f"{'chunk':>6} {'peak extra MiB':>15} {'one chunk of probs MiB':>23} {'full TxT MiB':>13} {'seconds':>8}")
    for chunk in args.chunks:
        command = [sys.executable, "-m", "kvpress_lab.benchmarks.h2o_memory", "--child", "--length", str(args.length),
                   "--chunks", str(chunk), "--model", args.model]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"{chunk:>6} {result['peak_extra_mib']:>15.1f} {result['one_chunk_of_probs_mib']:>23.1f} "
              f"{result['full_txt_matrix_mib']:>13.1f} {result['seconds']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
