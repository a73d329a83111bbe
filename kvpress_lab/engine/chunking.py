"""Chunked prefill with compression: the prompt arrives in chunks, every layer is cut back after each.

A prompt of ``T`` tokens prefilled in chunks of ``C`` (transformers' ``generate(...,
prefill_chunk_size=C)``, or :func:`~kvpress_lab.engine.prefill.prefill` with ``chunk_size``)
is compressed after every chunk: each full-attention layer then holds at most its budget plus
one chunk, instead of the whole prompt. Budgets refer to the final prompt length, known when
the chunked prefill starts, so the last chunk leaves exactly what one-shot compression would
keep in number (not necessarily in which entries: a chunk's scorer sees only the queries of
that chunk, never those of later tokens).

What can be scored from a chunk: a scorer declares ``chunked_prefill = True`` when it needs only
the keys and values held and the queries of the current chunk (window attention, recency, key
norms, ...). A scorer that also declares ``accumulates_scores = True`` (``h2o``) provides
``score_chunk(view, query_start)``, the share of the chunk's queries; the engine adds it to a
running ``(B, Hkv, held)`` score per layer, carries the kept entries' scores to the next chunk
and drops the evicted ones' (``CompressionSession.accumulated_scores``), as H2O does while it
generates.

Per-head (ragged) layers (``head_allocation="adaptive"``, AdaKV-style) are re-compressed after
every chunk too: the chunk's entries are appended to every head, each head is scored on its own
held entries, and the layer's budget is split across its heads again
(:mod:`kvpress_lab.engine.per_head_chunks`); a head holds at most its previous allocation plus
one chunk.

Allocators of scope ``"global"`` are refused with a clear error: their budgets come from a
statistic of every layer over the *whole* prompt (the final observation window), known only
after the last chunk, while every earlier chunk must already be cut to a budget; holding the
layers uncompressed until then would be one-shot prefill's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvpress_lab.capabilities import SCORER
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.errors import UnsupportedCacheError

__all__ = ["ChunkedPrefill", "check_chunkable", "check_chunk_size"]


@dataclass
class ChunkedPrefill:
    """The chunked prefill a session is running.

    Parameters
    ----------
    input_ids : torch.Tensor or None
        ``(B, T)`` ids of the whole prompt (``None`` when it runs on embeddings).
    valid : torch.Tensor
        ``(B, T)`` bool padding of the whole prompt (left padding only).
    start, stop : int
        Token range of the chunk being run.
    """

    input_ids: torch.Tensor | None
    valid: torch.Tensor

    def __post_init__(self) -> None:
        self.start = 0
        self.stop = 0

    @property
    def total(self) -> int:
        """``T``, the whole prompt's length (padding included)."""
        return self.valid.shape[1]

    def tokens_so_far(self) -> torch.Tensor | None:
        """``(B, stop)`` ids consumed up to the end of the current chunk."""
        return None if self.input_ids is None else self.input_ids[:, : self.stop]


def check_chunk_size(chunk_size: object, name: str = "chunk_size") -> None:
    """Refuse a chunk size that is not ``None`` or an integer ``>= 1`` (``name``: the argument, for the message)."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"{name} must be an integer >= 1 or None, got {chunk_size!r} of type {type(chunk_size).__name__}.")
    if chunk_size < 1:
        raise ValueError(f"{name} must be an integer >= 1 or None, got {chunk_size!r}.")


def check_chunkable(recipe: EngineRecipe, chunk_size: int | None = None) -> None:
    """Refuse a recipe that cannot compress during a chunked prefill, naming what and why.

    Raises
    ------
    UnsupportedCacheError
        For a scorer that does not declare ``chunked_prefill``, or a ``"global"`` allocator.
    TypeError, ValueError
        For a chunk size that is not an integer >= 1.
    """
    check_chunk_size(chunk_size, "prefill chunk size")
    strategies = recipe.strategies
    reasons = []
    if not SCORER.of(strategies.scorer, "chunked_prefill"):
        reasons.append(
            f"scorer {recipe.scorer!r} does not declare chunked_prefill = True (it may need the queries of every prompt "
            "token, which a chunk no longer has)"
        )
    if strategies.allocator.scope != "static":
        reasons.append(f"allocator {recipe.allocator!r} has scope {strategies.allocator.scope!r} (it needs every layer of the whole prompt)")
    if recipe.rerotate_keys:
        reasons.append("rerotate_keys=True (keys are re-rotated once, after a one-pass prefill)")
    if reasons:
        raise UnsupportedCacheError(
            "This recipe cannot compress during a chunked prefill: " + "; ".join(reasons) + ". Prefill in one pass "
            "(drop prefill_chunk_size / chunk_size), or pick a chunkable recipe (snapkv, pyramidkv, streamingllm, ...)."
        )
