"""``kvpress-lab bench memory``: peak process memory and KV bytes during prefill and decoding, per setting.

For one prompt of ``length`` tokens (seeded synthetic text) every setting prefills the prompt and
then greedily decodes exactly ``decode_tokens`` tokens (``min_new_tokens = max_new_tokens``):

* ``full``: no compression (the reference);
* ``oneshot``: the recipe, prefill compressed in one pass;
* ``chunked C``: the recipe, prefill in chunks of ``C`` tokens, compressed after each;
* ``decode N`` (with ``decode_budget``): the recipe with decoding-time compression to ``N``
  entries every ``compress_every`` tokens, one-shot prefill; and ``decode-only N``, the same with
  ``compress_prefill=False`` (only the generation is compressed).

Per setting (one row):

* ``prefill_s``: wall-clock seconds of the prefill (compression included);
* ``peak_rss_mib``: peak resident memory of the whole process during the prefill (model weights
  included); ``prefill_peak_rss_mib``: that peak minus its resident size just before
  (:class:`~kvpress_lab.benchmarks.peak_memory.PeakMemory`, sampled every
  5 ms); ``prefill_peak_kv_mib``: the largest cache held after any attention layer's forward
  during the prefill (:class:`~kvpress_lab.benchmarks.chunked_prefill.KVPeakProbe`), all layers;
* ``decode_peak_kv_mib`` and ``final_kv_mib``: the largest cache during decoding, and at its end;
* ``prefill_max_entries`` / ``decode_max_entries`` / ``final_max_entries``: most slots one layer
  held (per row and head) during each phase and at the end — bounded by ``budget + C`` (+ the
  window) chunked, and by ``decode_budget + compress_every`` while decoding once the first cut
  has run (the first decoding step still sees what the prefill left, e.g. the whole prompt with
  ``compress_prefill=False``);
* ``step_ms_first`` / ``step_ms_100`` / ``step_ms_last``: median ms per decoding step over the
  first 20 steps, steps 90-110 and the last 20 steps.

Each setting runs in a fresh process by default (a process's resident memory does not shrink
back after a large prefill, which would hide the next setting's peak); ``in_process=True`` runs
them in this one (tests, quick looks).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

__all__ = ["settings", "measure_setting", "memory_table", "cmd_memory"]


def settings(chunks: Sequence[int] = (), decode_budget: int | None = None, compress_every: int | None = None) -> list[tuple]:
    """The settings measured: full, one-shot, one per chunk size, and the two decoding ones with ``decode_budget``.

    Each is ``(label, recipe fields to override or None for the full cache, prefill chunk size or None)``.
    """
    out: list[tuple] = [("full", None, None), ("oneshot", {}, None)]
    out += [(f"chunked {c}", {}, int(c)) for c in dict.fromkeys(chunks)]
    if decode_budget is not None:
        decoding = {"decode_budget": decode_budget, **({} if compress_every is None else {"compress_every": compress_every})}
        out += [(f"decode {decode_budget}", decoding, None),
                (f"decode-only {decode_budget}", {**decoding, "compress_prefill": False}, None)]
    return out


def _steps_ms(durations: Sequence[float], start: int, stop: int) -> float | None:
    window = list(durations[max(start, 0):stop])
    return 1000 * statistics.median(window) if window else None


def measure_setting(model: Any, input_ids: Any, setting: tuple, *, preset: str = "snapkv", budget: int = 128,
                    decode_tokens: int = 32, pad_token_id: int | None = None, warm_up: bool = False) -> dict[str, Any]:
    """Prefill ``input_ids`` ``(1, T)`` minus its last token with ``setting``, then decode ``decode_tokens`` tokens.

    With ``warm_up``, a forward of 8 tokens runs first (unmeasured): the weights are then resident
    and kernels chosen, so the prefill's time and memory growth are its own.

    Returns one row (see the module docstring); bytes in MiB, times in ms.
    """
    import torch

    from kvpress_lab import Recipe
    from kvpress_lab.benchmarks.chunked_prefill import KVPeakProbe, cache_bytes, layer_entries
    from kvpress_lab.benchmarks.generation import ForwardTimer
    from kvpress_lab.benchmarks.peak_memory import PeakMemory
    from kvpress_lab.engine.model_hooks import hooks_in_use
    from kvpress_lab.engine.prefill import compressed_prefill, forward_cache

    label, fields, chunk = setting
    recipe = None if fields is None else Recipe.preset(preset, budget=budget, **fields)
    device = next(model.parameters()).device
    if warm_up:
        with torch.no_grad():
            model(input_ids[:, :8], use_cache=True)
    with hooks_in_use(model, "bench memory"):  # decoding hooks for this setting only
        with torch.no_grad(), KVPeakProbe(model) as probe:
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                if recipe is None:
                    cache = forward_cache(model, input_ids[:, :-1])
                else:
                    cache = compressed_prefill(recipe, model, input_ids[:, :-1], chunk_size=chunk)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                prefill_s = time.perf_counter() - start
            prefill = (probe.peak_bytes, probe.max_entries, cache_bytes(cache))
            probe.reset()
            decoding = recipe.apply(model) if recipe is not None and recipe.decode_budget is not None else nullcontext()
            with decoding, ForwardTimer(model) as timer:  # durations[0]: the last prompt token, then one per step
                model.generate(input_ids, attention_mask=torch.ones_like(input_ids), cache=cache, do_sample=False,
                               max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, pad_token_id=pad_token_id)
    steps = timer.durations[1:]
    return {
        "setting": label, "preset": None if recipe is None else preset, "budget": None if recipe is None else budget,
        "prefill_chunk": chunk, "decode_budget": None if recipe is None else recipe.decode_budget,
        "compress_every": None if recipe is None or recipe.decode_budget is None else recipe.compress_every,
        "length": int(input_ids.shape[1]), "decode_tokens": decode_tokens,
        "prefill_s": prefill_s, "prefill_peak_rss_mib": max(memory.peak_rss_mb - memory.start_rss_mb, 0.0),
        "peak_rss_mib": memory.peak_rss_mb, "rss_source": memory.source,
        "prefill_cuda_peak_mib": memory.cuda_peak_mb,
        "prefill_peak_kv_mib": prefill[0] / 2**20, "prefill_max_entries": prefill[1], "prefill_final_kv_mib": prefill[2] / 2**20,
        "decode_peak_kv_mib": probe.peak_bytes / 2**20, "decode_max_entries": probe.max_entries,
        "final_kv_mib": cache_bytes(cache) / 2**20, "final_max_entries": max(map(layer_entries, cache.layers), default=0),
        "step_ms_first": _steps_ms(steps, 0, 20), "step_ms_100": _steps_ms(steps, 90, 111) if len(steps) > 100 else None,
        "step_ms_last": _steps_ms(steps, len(steps) - 20, len(steps)),
        "recipe_config": None if recipe is None else recipe.to_dict(),
    }


def memory_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a text table; percentages relative to the ``full`` row."""
    full = next((r for r in rows if r["setting"] == "full"), rows[0])

    def pct(value: float, ref: float) -> str:
        return f"{100 * value / ref:.1f}%" if ref else "-"

    def ms(value: float | None) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.1f}"

    header = ("setting", "prefill +RSS MiB", "(% full)", "prefill peak KV MiB", "(% full)", "max/layer",
              "decode peak KV MiB", "max/layer", "final KV MiB", "ms/step first", "@100", "last")
    lines = [header]
    for r in rows:
        lines.append((r["setting"], f"{r['prefill_peak_rss_mib']:.1f}", pct(r["prefill_peak_rss_mib"], full["prefill_peak_rss_mib"]),
                      f"{r['prefill_peak_kv_mib']:.2f}", pct(r["prefill_peak_kv_mib"], full["prefill_peak_kv_mib"]),
                      str(r["prefill_max_entries"]), f"{r['decode_peak_kv_mib']:.2f}", str(r["decode_max_entries"]),
                      f"{r['final_kv_mib']:.2f}", ms(r["step_ms_first"]), ms(r["step_ms_100"]), ms(r["step_ms_last"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _prompt_ids(tokenizer: Any, length: int, seed: int) -> Any:
    """``(1, length)`` ids of seeded synthetic text (longer text is cut)."""
    from kvpress_lab.analysis.synthetic import synthetic_text

    ids = tokenizer(synthetic_text(length, seed=seed), return_tensors="pt").input_ids
    words = length
    while ids.shape[1] < length:  # the text has about one token per word or more; grow it when it is short
        words *= 2
        ids = tokenizer(synthetic_text(words, seed=seed), return_tensors="pt").input_ids
    return ids[:, :length]


def _child_command(args: argparse.Namespace, index: int) -> list[str]:
    options = {key: getattr(args, key, None) for key in ("model", "device", "device_map", "dtype", "attn", "seed", "length",
                                                          "preset", "budget", "chunks", "decode_budget", "compress_every",
                                                          "decode_tokens")}
    return [sys.executable, "-m", "kvpress_lab.benchmarks.memory", json.dumps(options), str(index)]


def _run_settings(args: argparse.Namespace, model: Any, tokenizer: Any, chosen: Sequence[int]) -> list[dict[str, Any]]:
    ids = _prompt_ids(tokenizer, args.length, args.seed).to(next(model.parameters()).device)
    all_settings = settings(args.chunks or (), args.decode_budget, args.compress_every)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [measure_setting(model, ids, all_settings[i], preset=args.preset, budget=args.budget,
                            decode_tokens=args.decode_tokens, pad_token_id=pad, warm_up=getattr(args, "warm_up", False))
            for i in chosen]


def cmd_memory(args: argparse.Namespace) -> int:
    """``kvpress-lab bench memory``: measure every setting, print the table, write JSON Lines (meta + one row each)."""
    from kvpress_lab import Recipe
    from kvpress_lab.benchmarks.commands import (
        BenchmarkInputError, UsageError, check_model_arguments, check_output_file, load,
    )
    from kvpress_lab.benchmarks.results import append_jsonl, model_settings, run_metadata
    from kvpress_lab.engine.chunking import check_chunkable
    from kvpress_lab.errors import KVPressLabError

    if args.compress_every is not None and args.decode_budget is None:
        raise UsageError("--compress-every does nothing without --decode-budget; add --decode-budget N.")
    chosen = settings(args.chunks or (), args.decode_budget, args.compress_every)
    try:
        for label, fields, chunk in chosen:
            if fields is not None:
                recipe = Recipe.preset(args.preset, budget=args.budget, **fields)
                if chunk is not None:
                    check_chunkable(recipe, chunk)
    except KVPressLabError as exc:  # a recipe that cannot compress a chunked prefill: --chunks conflicts with --preset
        raise UsageError(f"--chunks with --preset {args.preset}, setting {label!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise BenchmarkInputError(f"setting {label!r} (--preset {args.preset} --budget {args.budget}): {exc}") from None
    check_model_arguments(args)
    out = check_output_file("--out", args.out or "results/memory.jsonl")
    if args.in_process:
        model, tokenizer = load(args)
        rows = _run_settings(args, model, tokenizer, range(len(chosen)))
    else:
        rows = []
        for index, (label, _, _) in enumerate(chosen):
            print(f"bench memory: {label} (fresh process) ...", file=sys.stderr, flush=True)
            result = subprocess.run(_child_command(args, index), capture_output=True, text=True)
            if result.returncode != 0:
                raise BenchmarkInputError(f"setting {label!r} failed in its process: "
                                          f"{(result.stderr.strip().splitlines() or ['(no output)'])[-1]}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    meta = run_metadata("memory", args.model, {label: fields for label, fields, _ in chosen}, seed=args.seed,
                        **(model_settings(model) if args.in_process else {"device": args.device, "dtype": args.dtype,
                                                                           "attn_implementation": args.attn}),
                        config={"length": args.length, "preset": args.preset, "budget": args.budget, "chunks": args.chunks,
                                "decode_budget": args.decode_budget, "compress_every": args.compress_every,
                                "decode_tokens": args.decode_tokens, "in_process": args.in_process})
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    append_jsonl(out, [{"type": "meta", **meta}] + [{"type": "result", **row} for row in rows])
    print(memory_table(rows))
    print(f"Wrote {out}")
    return 0


def _child(options: dict[str, Any], index: int) -> int:
    """One setting in this (fresh) process; prints its row as one JSON line."""
    from kvpress_lab.benchmarks.commands import load

    args = argparse.Namespace(**options)
    model, tokenizer = load(args)
    (row,) = _run_settings(args, model, tokenizer, [index])
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(json.loads(sys.argv[1]), int(sys.argv[2])))
