"""Block-wise scoring inside one forward: kvpress's ``BlockPress`` (``Recipe(block_size=...)``).

kvpress's ``BlockPress`` simulates the block prompt processing of the KeyDiff paper
(https://arxiv.org/abs/2504.15364) after a one-shot prefill: a layer keeps its first ``k``
entries, then for each block of ``block_size`` further entries it scores the kept ones together
with the block and keeps the best ``k`` again, per KV head (``torch.topk``, kvpress's ties). The
final selection is the last block's winners. Because the kept entries differ per head, a block's
view holds keys and values only: no queries, hidden states or positions (kvpress gathers a
per-head mixture of hidden-state slices there, which only scorers that ignore them survive), so
a scorer that reads them raises. A true chunked prefill (``prefill_chunk_size``) is the real
thing for scorers that can score chunks.
"""

from __future__ import annotations

import torch

from kvpress_lab.errors import UnsupportedCacheError
from kvpress_lab.layer_view import LayerView
from kvpress_lab.protocols import Selection

__all__ = ["select_in_blocks"]


def select_in_blocks(scorer: object, view: LayerView, keep: torch.Tensor, block_size: int, window: int) -> Selection:
    """The entries ``k = keep`` survive kvpress's block-by-block rescoring: a :class:`Selection` ``(B, Hkv, k)``.

    Parameters
    ----------
    scorer : Scorer
        Scores each block's view (keys and values only).
    view : LayerView
        The layer after its one-shot prefill.
    keep : torch.Tensor
        ``(B,)`` int64: the layer's budget per row (every row alike).
    block_size : int
        Entries added per step.
    window : int
        The last ``window`` prompt entries are always kept (``+inf`` when a block holds them).

    Raises
    ------
    UnsupportedCacheError
        For a left-padded batch or rows with different budgets (kvpress scores one unpadded row).
    """
    batch, heads, length = view.batch_size, view.num_kv_heads, view.seq_len
    if not bool(view.valid.all()) or bool((keep != keep[0]).any()):
        raise UnsupportedCacheError(
            "Recipe.block_size (kvpress's BlockPress) scores unpadded prompts with one budget per layer; this batch is "
            "left-padded. Compress its rows one at a time, or drop block_size."
        )
    kept_count = int(keep[0])
    device = view.device
    if kept_count >= length:
        indices = torch.arange(length, device=device).expand(batch, heads, -1)
        return Selection(indices, torch.ones_like(indices, dtype=torch.bool))
    block = min(block_size, length)
    kept = torch.arange(kept_count, device=device).expand(batch, heads, -1)  # (B, Hkv, k): the first k entries
    for start in range(kept_count, length, block):
        current = torch.cat([kept, torch.arange(start, min(start + block, length), device=device).expand(batch, heads, -1)],
                            dim=-1)  # (B, Hkv, n)
        scores = scorer.score(_block_view(view, current))
        expected = tuple(current.shape)
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"Scorer {scorer.name!r} returned scores of shape {got} for a block, "
                             f"expected (B, Hkv, n)={expected}.")
        recent = current >= length - window  # the observation window always stays
        if bool(recent.any()):
            scores = scores.masked_fill(recent, float("inf"))
        kept = current.gather(-1, scores.topk(kept_count, dim=-1).indices)  # kvpress's call and ties
    kept = kept.sort(dim=-1).values
    return Selection(kept, torch.ones_like(kept, dtype=torch.bool))


def _block_view(view: LayerView, entries: torch.Tensor) -> LayerView:
    """The view of ``entries`` ``(B, Hkv, n)`` of ``view``'s layer: their keys and values, nothing else."""
    index = entries[..., None].expand(-1, -1, -1, view.head_dim)
    batch, _, count = entries.shape

    def no_queries(start: int, stop: int) -> torch.Tensor:
        raise ValueError(
            "block-wise scoring (Recipe.block_size, kvpress's BlockPress) keeps different entries in each KV head, so a "
            "block has no queries or hidden states; use a scorer that reads keys and values only (keydiff, knorm, ...)."
        )

    return LayerView(
        layer_idx=view.layer_idx,
        keys=view.keys.gather(2, index),
        values=view.values.gather(2, index),
        valid=torch.ones(batch, count, dtype=torch.bool, device=view.device),
        window=0,
        scaling=view.scaling,
        num_query_heads=view.num_query_heads,
        query_fn=no_queries,
        output_projection=view.output_projection,
    )
