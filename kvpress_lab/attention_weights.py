"""Causal softmax attention of a block of queries over a layer's keys, in float32.

Kept apart from :mod:`kvpress_lab.attention` (statistics over a :class:`~kvpress_lab.LayerView`)
so that the view itself can offer attention weights (:meth:`kvpress_lab.LayerView.attention_weights`)
without the two modules importing each other.
"""

from __future__ import annotations

import einops
import torch

__all__ = ["attention_probs"]


def attention_probs(
    queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, query_start: int, scaling: float
) -> torch.Tensor:
    """Causal softmax attention of a block of queries over all keys, in float32.

    Parameters
    ----------
    queries : torch.Tensor
        ``(B, Hq, Q, D)``, the queries of tokens ``query_start : query_start + Q``.
    keys : torch.Tensor
        ``(B, Hkv, T, D)``; each KV head serves ``G = Hq / Hkv`` consecutive query heads.
    valid : torch.Tensor
        ``(B, T)`` bool, ``False`` on padding (never attended).
    query_start : int
        Position of the first query; query ``i`` sees keys ``<= query_start + i``.
    scaling : float
        Softmax scale.

    Returns
    -------
    torch.Tensor
        ``(B, Hq, Q, T)`` float32 probabilities (rows of padded queries are all zero).
    """
    num_kv = keys.shape[1]
    q = einops.rearrange(queries.float(), "b (h g) q d -> b h g q d", h=num_kv)
    logits = torch.einsum("bhgqd,bhtd->bhgqt", q, keys.float()) * scaling  # (B, Hkv, G, Q, T)
    q_pos = torch.arange(query_start, query_start + queries.shape[2], device=keys.device)
    k_pos = torch.arange(keys.shape[2], device=keys.device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None, None] & valid[:, None, None, None, :]
    logits.masked_fill_(~allowed, float("-inf"))  # in place: at most two (B, Hq, Q, T) buffers live
    probs = torch.softmax(logits, dim=-1)
    del logits
    probs.nan_to_num_(0.0)  # fully masked rows (padded queries) -> 0
    return einops.rearrange(probs, "b h g q t -> b (h g) q t")
