"""Speed and memory: prefill with and without compression, decoding steps, KV bytes, peak memory.

For each prompt length ``T`` one filler prompt is built; after one warm-up run at that length, the
full cache and every recipe run on that same prompt in the same process, ``repeats`` times,
interleaved (full, recipe 1, recipe 2, full, ...), each with a fixed number of greedy decoding
steps. Medians are reported per (T, recipe):

- ``prefill_s``: the first forward of ``generate`` (compression included for a recipe);
- ``overhead_s``: ``prefill_s - prefill_s(full)`` on the same prompt;
- ``decode_step_s``: mean seconds per decoding step (one token) over ``decode_steps`` steps;
- ``score_s``, ``allocate_s``, ``select_s``, ``gather_s`` and their sum ``roles_s``: seconds spent
  inside each role of the compression (:mod:`kvpress_lab.engine.role_timers`), timed in the same
  run as ``prefill_s``, and ``roles_share = roles_s / prefill_s`` (median over the repeats; ``None``
  for the full cache). On CUDA the timers synchronise around each role, which the timed prefill
  then includes; on the CPU they cost two clock reads per role call;
- ``kv_bytes_before`` / ``kv_bytes_after``: cache bytes of the full cache and of the recipe's
  cache right after prefill;
- ``peak_rss_mb``: peak resident memory of the process while the row ran, and ``cuda_peak_mb``
  on a GPU (:class:`~kvpress_lab.benchmarks.peak_memory.PeakMemory`, sampled every 5 ms).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from kvpress_lab.benchmarks.generation import generate_answer
from kvpress_lab.benchmarks.haystack import fill_to_tokens
from kvpress_lab.benchmarks.needle import token_counter
from kvpress_lab.benchmarks.peak_memory import PeakMemory
from kvpress_lab.engine.role_timers import ROLES, time_roles
from kvpress_lab.recipe_labels import FULL, CacheSize

__all__ = ["speed_prompt", "minimum_length", "measure_speed"]

_QUESTION = "\n\nQuestion: Summarise the text above in one sentence.\nAnswer:"


def speed_prompt(tokenizer: Any, length: int, seed: int = 0) -> tuple[str, str]:
    """``(context, question)`` of about ``length`` tokens of filler and a short question.

    ``length`` must be at least :func:`minimum_length` (the question, plus one token of context).
    """
    count = token_counter(tokenizer)
    if length < minimum_length(tokenizer):
        raise ValueError(f"length {length} is too short for the speed prompt: use a length >= {minimum_length(tokenizer)}.")
    return " ".join(fill_to_tokens(length - count(_QUESTION), count, seed=seed)), _QUESTION


def minimum_length(tokenizer: Any) -> int:
    """Fewest tokens a :func:`speed_prompt` can have with ``tokenizer``: its question plus one."""
    return token_counter(tokenizer)(_QUESTION) + 1


def measure_speed(
    model: Any,
    tokenizer: Any,
    recipes: Iterable[tuple[str, CacheSize, Any]],
    lengths: Sequence[int] = (2048, 4096),
    *,
    decode_steps: int = 16,
    repeats: int = 1,
    seed: int = 0,
    progress: bool = True,
    prefill_chunk: int | None = None,
) -> list[dict[str, Any]]:
    """Time every ``(label, size, recipe)`` at every length; the full cache always runs first.

    Parameters
    ----------
    recipes : iterable of (str, CacheSize, Recipe or None)
        As in :func:`~kvpress_lab.benchmarks.needle.run_needle`; a full-cache entry is added
        first, since it is the reference of ``overhead_s``.
    lengths : sequence of int
        Prompt lengths ``T`` in tokens.
    decode_steps : int
        Decoding steps per run (``min_new_tokens = max_new_tokens``).
    repeats : int
        Runs per row, interleaved across recipes; the median of each time is reported.
    prefill_chunk : int or None
        Prefill every recipe in chunks of this many tokens (the full cache runs unchunked).
    """
    from tqdm.auto import tqdm

    if repeats < 1 or decode_steps < 1:
        raise ValueError(f"repeats and decode_steps must be >= 1, got {repeats} and {decode_steps}.")
    entries = [e for e in recipes if e[2] is not None]
    entries.insert(0, (FULL, CacheSize(), None))
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(lengths) * (len(entries) * repeats + 1), desc="speed", unit="run", disable=not progress) as bar:
        for length in lengths:
            context, question = speed_prompt(tokenizer, int(length), seed)
            bar.set_postfix_str(f"T={length} warm-up")
            generate_answer(model, tokenizer, None, context, question, max_new_tokens=2)  # allocator, kernels
            bar.update()
            runs: dict[int, list[Any]] = {i: [] for i in range(len(entries))}
            peaks: dict[int, list[PeakMemory]] = {i: [] for i in range(len(entries))}
            roles: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(entries))}
            for _ in range(repeats):  # interleaved, so drifting machine load hits every recipe alike
                for i, (label, size, recipe) in enumerate(entries):
                    bar.set_postfix_str(f"T={length} {label}@{size.value}")
                    with PeakMemory(device) as memory, time_roles(model) as timed:
                        runs[i].append(generate_answer(model, tokenizer, recipe, context, question,
                                                       max_new_tokens=decode_steps, min_new_tokens=decode_steps,
                                                       prefill_chunk=prefill_chunk))
                    peaks[i].append(memory)
                    if timed.entries:  # one session per compressed generate
                        roles[i].append(timed.entries[0][1].as_dict())
                    bar.update()
            for i, (label, size, recipe) in enumerate(entries):
                rows.append({**_row(length, label, size.budget, recipe, runs[i], peaks[i], runs[0], decode_steps),
                             **_roles(roles[i], runs[i])})
    return rows


def _roles(timed: list[dict[str, float]], runs: list[Any]) -> dict[str, Any]:
    """Median seconds per role over the repeats and the median share of the prefill they take."""
    if not timed:
        return {key: None for key in (*(f"{role}_s" for role in ROLES), "roles_s", "roles_share")}
    out: dict[str, Any] = {key: statistics.median(t[key] for t in timed) for key in timed[0]}
    out["roles_share"] = statistics.median(t["roles_s"] / r.prefill_s for t, r in zip(timed, runs))
    return out


def _row(length, label, budget, recipe, runs, peaks, full_runs, decode_steps) -> dict[str, Any]:
    prefill = statistics.median(r.prefill_s for r in runs)
    cuda = [p.cuda_peak_mb for p in peaks if p.cuda_peak_mb is not None]
    return {
        "length": int(length), "recipe": label, "budget": budget, "prompt_tokens": runs[0].prompt_tokens,
        "prefill_s": prefill, "prefill_runs_s": [r.prefill_s for r in runs],
        "overhead_s": prefill - statistics.median(r.prefill_s for r in full_runs),
        "decode_step_s": statistics.median(r.decode_step_s for r in runs),
        "kv_bytes_before": full_runs[0].kv_bytes, "kv_bytes_after": runs[0].kv_bytes,
        "peak_rss_mb": max(p.peak_rss_mb for p in peaks), "rss_source": peaks[0].source,
        "cuda_peak_mb": max(cuda) if cuda else None, "repeats": len(runs), "decode_steps": decode_steps,
        "recipe_config": None if recipe is None else recipe.to_dict(),
    }
