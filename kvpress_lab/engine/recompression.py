"""Re-compressing a layer from the entries it holds: after a chunk of a chunked prefill, or while decoding.

A layer that already holds entries (uncompressed, or compressed by an earlier cut) is cut back to
``keep`` entries per row once some row holds ``keep + slack`` or more. Only the inputs of the
*last* held entries are known (the chunk's, or the latest decoded tokens'): they are the only
queries a scorer gets, and the last ``W`` entries stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from transformers.cache_utils import DynamicLayer

from kvpress_lab.capabilities import CACHE_LAYER
from kvpress_lab.engine.eviction import EvictionContext, ScoredLayer, evict, score
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.errors import UnsupportedCacheError
from kvpress_lab.layer_view import LayerView
from kvpress_lab.protocols import Selection

__all__ = ["LatestInputs", "held_entries", "recompress"]


class LatestInputs(NamedTuple):
    """The attention inputs of the last ``S`` held entries: the only queries a re-compression has."""

    hidden: torch.Tensor
    """``(B, S, hidden_size)``."""
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    """``(cos, sin)``, each ``(B or 1, S, D)``."""
    queries: torch.Tensor | None = None
    """``(B, Hq, S, D)`` the attention computed, or ``None`` (recomputed from ``hidden``)."""


def held_entries(layer: object, all_valid: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, Hkv, P, D)`` keys and values a layer holds and their ``(B, P)`` validity, to re-compress it.

    An uncompressed layer holds every token: ``all_valid`` ``(B, P)`` says which are real. A
    compressed layer must declare ``dense_entries()`` (:data:`~kvpress_lab.capabilities.CACHE_LAYER`);
    ``what`` names the mode in the error.
    """
    if type(layer) is DynamicLayer:
        return layer.keys, layer.values, all_valid.to(layer.keys.device)
    dense = CACHE_LAYER.of(layer, "dense_entries")
    if dense is not None:
        return dense()
    raise UnsupportedCacheError(
        f"{what} re-compresses layers that expose dense_entries(); this layer is a {type(layer).__name__} "
        "(per-head and third-party layers are not re-compressed yet)."
    )


def recompress(context: EvictionContext, adapter: ModelAdapter, held: ScoredLayer, keep: torch.Tensor,
               recent: LatestInputs, *, slack: int = 0,
               compute: Callable[[LayerView], torch.Tensor] | None = None) -> tuple[torch.Tensor | None, Selection | None]:
    """Evict ``held``'s entries down to ``keep`` ``(B,)`` once some row holds ``keep + slack`` or more.

    With ``compute`` (an accumulating scorer in a chunked prefill: the chunk's share plus the
    running scores) the layer is scored even when it is within budget.

    Returns
    -------
    tuple
        The ``(B, Hkv, P)`` scores (``None`` when nothing was scored) and the selection (``None``
        when nothing was evicted).
    """
    real = held.valid.sum(dim=-1).cpu()  # (B,) entries held per row
    within = not bool((real >= keep + max(slack, 1)).any())
    if within and compute is None:
        return None, None  # within budget (+ slack)
    hidden, position_embeddings, queries = recent
    length = held.keys.shape[2]
    with context.timed("score"):
        view = adapter.layer_view(held.idx, hidden, position_embeddings, held.keys, held.values, held.valid, context.window,
                                  queries_from=length - hidden.shape[1], queries=queries)
        held.scored = score(context, view, kept_window=min(context.window, length), compute=compute)
    if within:
        return held.scored.scores, None
    return held.scored.scores, evict(context, held, keep)
