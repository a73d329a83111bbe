"""Re-compressing a per-head (ragged) layer after a chunk: every KV head scored and cut on its own entries.

After a chunk's forward a :class:`~kvpress_lab.cache_layers.RaggedLayer` holds, per KV head, the
entries it kept from earlier chunks followed by the chunk's ``C`` new ones, right-aligned in a
padded ``(B, Hkv, P, D)`` view (``P`` = the longest head + ``C``); which slots are real differs
per head, ``(B, Hkv, P)``. Scorers and executors read one validity per *row* ``(B, P)``, so each
``(row, KV head)`` is presented as a row of its own: ``B * Hkv`` rows of one KV head (its ``G``
query heads), which is exact for scorers that score every KV head from its own keys and queries.
The per-head budgets are split across the heads of each real row as in one-shot compression
(:func:`~kvpress_lab.head_allocation.adaptive_head_budgets` accepts per-head candidates).
"""

from __future__ import annotations

import dataclasses

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.protocols import Selection

__all__ = ["heads_as_rows", "rows_as_heads", "select_per_head"]


def heads_as_rows(view: LayerView, head_valid: torch.Tensor) -> LayerView:
    """``view`` of ``(B, Hkv, P, D)`` entries re-shaped to ``B * Hkv`` rows of one KV head each.

    Parameters
    ----------
    view : LayerView
        The layer's view (its ``valid`` is ignored).
    head_valid : torch.Tensor
        ``(B, Hkv, P)`` bool: real entries of each head.

    Returns
    -------
    LayerView
        Keys/values ``(B * Hkv, 1, P, D)``, ``valid`` ``(B * Hkv, P)``, ``G`` query heads whose
        queries are ``(B * Hkv, G, Q, D)`` (query head ``h * G + g`` of row ``b`` becomes head
        ``g`` of row ``b * Hkv + h``, the KV head it reads).
    """
    batch, heads, length, head_dim = view.keys.shape
    groups = view.num_groups
    query_fn = view.query_fn

    def queries(start: int, stop: int) -> torch.Tensor:
        q = query_fn(start, stop)  # (B, Hq, Q, D)
        return q.reshape(batch * heads, groups, q.shape[2], q.shape[3])

    return dataclasses.replace(
        view,
        keys=view.keys.reshape(batch * heads, 1, length, head_dim),
        values=view.values.reshape(batch * heads, 1, length, view.values.shape[-1]),
        valid=head_valid.reshape(batch * heads, length).to(view.keys.device),
        num_query_heads=groups,
        query_fn=queries,
        output_projection=None,  # its head layout no longer matches the rows
    )


def rows_as_heads(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B * Hkv, 1, ...)`` back to ``(B, Hkv, ...)``."""
    return x.reshape(batch, x.shape[0] // batch, *x.shape[2:])


def select_per_head(executor: object, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor,
                    head_valid: torch.Tensor) -> Selection:
    """The executor's selection of ``keep`` ``(B, Hkv)`` entries per head among each head's own candidates.

    ``scores`` / ``forced`` / ``head_valid`` are ``(B, Hkv, P)``; every ``(row, head)`` is
    selected as a row of one head (the executor's ``select`` takes ``(B, P)`` candidates).
    Returns a :class:`~kvpress_lab.protocols.Selection` of ``(B, Hkv, K)``.
    """
    batch, heads, length = scores.shape
    flat = executor.select(scores.reshape(batch * heads, 1, length), keep.reshape(batch * heads, 1),
                           forced.reshape(batch * heads, 1, length), head_valid.reshape(batch * heads, length))
    return Selection(indices=rows_as_heads(flat.indices, batch), valid=rows_as_heads(flat.valid, batch))
