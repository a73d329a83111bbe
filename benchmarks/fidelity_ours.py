"""kvpress_lab's side of the fidelity harness: the records :mod:`.kvpress_side` writes, from our recipes.

The same prompt flow and the same helpers (imported from :mod:`.kvpress_side`, the one copy both
sides run): the context is prefilled inside ``recipe.apply(model, record_indices=True)``, the
question is answered by :func:`~kvpress_lab.benchmarks.kvpress_side.greedy_answer` at positions
from ``T`` on. Kept positions are recovered by matching each layer's kept key rows (read through
the layer's own API, :meth:`~kvpress_lab.cache_layers.CompressedCacheLayer.head_entries`, so
ragged per-head layers work) byte for byte against a prefill without recipe; a recipe with
``rerotate_keys`` changes its keys, so its kept positions come from the session's recorded
selections instead. The decoding case runs the prefill, the teacher-forced continuation and the
answer inside one ``recipe.apply(model)`` block (the recipe compresses the generation only),
recording each new key row with :class:`~kvpress_lab.benchmarks.kvpress_side.KeyRecorder` first.

A record: ``kept`` ``(L, Hkv, T)`` bool, ``answer_ids``, ``first_logits`` ``(V,)``, ``prefill_s``,
``answer_s``, ``recovery``, ``context_length``, ``error`` (``None``, or the message of what failed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence

import torch

from kvpress_lab import Recipe
from kvpress_lab.benchmarks.kvpress_side import (
    KeyRecorder,
    force_and_answer,
    greedy_answer,
    kept_mask,
    mask_from_kept_indices,
)
from kvpress_lab.cache_layers import CompressedCacheLayer
from kvpress_lab.engine.model_hooks import disable_compressed_decoding, enable_compressed_decoding, persistent_hooks
from kvpress_lab.engine.prefill import forward_cache

__all__ = ["our_head_keys", "full_keys", "prefill_record", "decoding_record", "run_ours"]


def our_head_keys(layer: object, head: int) -> torch.Tensor:
    """``(n, D)`` key rows a cache layer holds for ``head`` of batch row 0, in token order (filler excluded)."""
    if isinstance(layer, CompressedCacheLayer):
        return layer.head_entries(0, head)[0]
    return layer.keys[0, head]


def full_keys(model: torch.nn.Module, context: torch.Tensor) -> list[torch.Tensor]:
    """``L`` tensors ``(Hkv, T, D)``: the keys of a prefill without recipe."""
    with torch.no_grad():
        cache = forward_cache(model, context)
    return [layer.keys[0].clone() for layer in cache.layers]


def _selected_mask(selections: Mapping[int, object], num_layers: int, num_heads: int, length: int) -> torch.Tensor:
    """``(L, Hkv, T)`` kept mask from a session's recorded selections (a layer without one kept everything)."""
    masks = []
    for idx in range(num_layers):
        selection = selections.get(idx)
        if selection is None:
            masks.append(torch.ones(num_heads, length, dtype=torch.bool))
            continue
        mask = torch.zeros(num_heads, length, dtype=torch.bool)
        for head in range(num_heads):
            mask[head] = mask_from_kept_indices(selection.indices[0, head][selection.valid[0, head]][None], length)[0]
        masks.append(mask)
    return torch.stack(masks)


def prefill_record(model: torch.nn.Module, recipe: Recipe, context: torch.Tensor, question: torch.Tensor,
                   reference: Sequence[torch.Tensor], seed: int, max_new_tokens: int,
                   eos_token_ids: Sequence[int]) -> dict:
    """Compress ``context`` ``(1, T)`` with ``recipe``, recover the kept positions, answer ``question`` ``(1, Q)``."""
    length = context.shape[1]
    torch.manual_seed(seed)  # right before the prefill, as on kvpress's side (random sketches)
    start = time.perf_counter()
    with torch.no_grad(), recipe.apply(model, record_indices=True) as session:
        cache = forward_cache(model, context)
    prefill_s = time.perf_counter() - start
    if recipe.rerotate_keys:
        kept = _selected_mask(session.selections, len(reference), reference[0].shape[0], length)
        recovery = "recorded selections (re-rotated keys)"
    else:
        kept, recovery = kept_mask(cache.layers, our_head_keys, reference), "byte match"
    start = time.perf_counter()
    answer, first = greedy_answer(model, cache, question, length, max_new_tokens, eos_token_ids)
    return {"kept": kept, "answer_ids": answer, "first_logits": first, "prefill_s": prefill_s,
            "answer_s": time.perf_counter() - start, "recovery": recovery, "context_length": length}


def decoding_record(model: torch.nn.Module, recipe: Recipe, context: torch.Tensor, continuation: torch.Tensor,
                    seed: int, max_new_tokens: int, eos_token_ids: Sequence[int]) -> dict:
    """Prefill ``context`` uncompressed, teacher-force ``continuation`` ``(1, M)`` under ``recipe``, then answer."""
    modules = [layer.self_attn for layer in model.model.layers]
    recorder = KeyRecorder(modules, our_head_keys, model.config.num_key_value_heads)
    with torch.no_grad(), recorder, recipe.apply(model):  # the recorder's hooks run before the session's
        torch.manual_seed(seed)
        start = time.perf_counter()
        cache = forward_cache(model, context)
        prefill_s = time.perf_counter() - start
        if any(isinstance(layer, CompressedCacheLayer) for layer in cache.layers):
            raise ValueError(f"Recipe {recipe.preset_name or recipe.scorer!r} compressed the prefill; the decoding case "
                             "compares compression of the generation only (compress_prefill=False).")
        prefill_keys = [layer.keys[0].clone() for layer in cache.layers]
        record = force_and_answer(model, cache, recorder, prefill_keys, continuation, max_new_tokens, eos_token_ids)
    return {**record, "prefill_s": prefill_s}


def run_ours(model: torch.nn.Module, runs: Sequence[Mapping], recipes: Mapping[tuple[str, float | None], Recipe],
             ids: Mapping, job: Mapping) -> list[dict]:
    """One record per run (``case``, ``ratio``, ``prompt``, ``seed``), in order; a failing run records its error."""
    from tqdm import tqdm

    had_hooks = persistent_hooks(model) is not None
    enable_compressed_decoding(model)  # compressed caches decode after their session closed
    references: dict[str, list[torch.Tensor]] = {}
    records = []
    try:
        for run in tqdm(runs, desc="kvpress_lab side", file=sys.stderr, dynamic_ncols=True):
            record = dict(run)
            try:
                recipe = recipes[(run["case"], run["ratio"])]
                prompt = ids["prompts"][run["prompt"]]
                if run["case"] == "decoding_knorm":
                    record.update(decoding_record(model, recipe, prompt["context_ids"], ids["continuation_ids"],
                                                  run["seed"], job["max_new_tokens"], job["eos_token_ids"]))
                else:
                    if run["prompt"] not in references:
                        references[run["prompt"]] = full_keys(model, prompt["context_ids"])
                    record.update(prefill_record(model, recipe, prompt["context_ids"], prompt["question_ids"],
                                                 references[run["prompt"]], run["seed"], job["max_new_tokens"],
                                                 job["eos_token_ids"]))
                record["error"] = None
            except Exception as exc:  # recorded and reported in the table; the other runs go on
                record["error"] = f"{type(exc).__name__}: {exc}"
            records.append(record)
    finally:
        if not had_hooks:
            disable_compressed_decoding(model)
    return records
