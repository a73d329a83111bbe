"""Per-entry statistics for allocators that rank cache entries across layers (``global_topk``, ``threshold``).

Such an allocator has scope ``"global"`` and defines ``scores_statistic(scores, forced, valid)``
instead of ``layer_statistic(view)``: the engine calls it at every compressible layer with the
scorer's scores and hands every layer's answer back, per row, as
``BudgetRequest.layer_statistics`` of shape ``(L, Hkv, T)`` (``T`` the padded prompt length).
"""

from __future__ import annotations

import torch

__all__ = ["NORMALISATIONS", "ranking_statistic", "check_entry_statistics"]

#: How scores are made comparable across layers before one ranking.
NORMALISATIONS = ("none", "minmax")


def ranking_statistic(scores: torch.Tensor, forced: torch.Tensor, valid: torch.Tensor, normalise: str) -> torch.Tensor:
    """Scores ready to be ranked across layers: ``(B, Hkv, T)`` float32.

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, Hkv, T)`` the scorer's scores.
    forced : torch.Tensor
        ``(B, Hkv, T)`` bool, entries always kept (window, sinks): ``+inf``.
    valid : torch.Tensor
        ``(B, T)`` bool, ``False`` on padding: ``-inf``.
    normalise : {"none", "minmax"}
        ``"none"``: the raw scores (KVzip: attention probabilities, already comparable).
        ``"minmax"``: per row and layer, ``(s - min) / (max - min)`` over the real, unforced
        entries of all heads (1 when they all score the same).

    Examples
    --------
    >>> s = torch.tensor([[[1.0, 3.0, 5.0, 2.0]]]); f = torch.tensor([[[False, False, False, True]]])
    >>> ranking_statistic(s, f, torch.tensor([[False, True, True, True]]), "minmax")
    tensor([[[-inf, 0., 1., inf]]])
    """
    valid = valid.to(scores.device)[:, None, :].expand_as(scores)
    forced = forced.to(scores.device) & valid
    out = scores.float()
    if normalise == "minmax":
        free = valid & ~forced
        low = out.masked_fill(~free, float("inf")).amin(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        high = out.masked_fill(~free, float("-inf")).amax(dim=(1, 2), keepdim=True)
        span = high - low
        flat = ~torch.isfinite(span) | (span <= 0)
        out = torch.where(flat, torch.ones_like(out), (out - low) / torch.where(flat, torch.ones_like(span), span))
    out = out.masked_fill(forced, float("inf"))
    return out.masked_fill(~valid, float("-inf"))


def check_entry_statistics(owner: str, statistics: object, num_layers: int, num_kv_heads: int, prompt_length: int) -> torch.Tensor:
    """Guard ``BudgetRequest.layer_statistics`` for an entry-ranking allocator: ``(L, Hkv, T >= n)``."""
    if not isinstance(statistics, torch.Tensor) or statistics.dim() != 3 or tuple(statistics.shape[:2]) != (
            num_layers, num_kv_heads) or statistics.shape[2] < prompt_length:
        got = tuple(statistics.shape) if isinstance(statistics, torch.Tensor) else type(statistics).__name__
        raise ValueError(
            f"{owner} (scope 'global') needs BudgetRequest.layer_statistics of shape (L, Hkv, T)=({num_layers}, "
            f"{num_kv_heads}, >= {prompt_length}): every layer's per-entry scores from scores_statistic, got {got}."
        )
    if bool(torch.isnan(statistics).any()):
        raise ValueError(f"{owner}: layer_statistics contain NaN; scores must be finite.")
    return statistics.float()
