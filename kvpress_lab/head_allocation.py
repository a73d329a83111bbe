"""Per-head budget splits inside a layer (AdaKV-style adaptive allocation).

Based on https://arxiv.org/abs/2407.11550 (Ada-KV): a layer's budget of ``k`` entries per head,
``k * Hkv`` in all, is split across its KV heads by a top-k over *all* heads' scores, so heads
with concentrated attention give entries to heads with dispersed attention. A safeguard floor
keeps at least ``alpha`` of the per-head average in every head.
"""

from __future__ import annotations

import math

import torch

from kvpress_lab.budgets import check_forced_fit
from kvpress_lab.ranking import best_entries

__all__ = ["HEAD_ALLOCATIONS", "HEAD_FLOOR_RULES", "adaptive_head_budgets", "safeguard_entries"]

#: Valid values of ``Recipe.head_allocation`` (see :class:`kvpress_lab.Recipe`).
HEAD_ALLOCATIONS = ("uniform", "adaptive")
#: Valid values of ``Recipe.head_floor_rule``: what AdaKV's safeguard counts.
HEAD_FLOOR_RULES = ("free", "kvpress")


def adaptive_head_budgets(
    scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor, alpha: float,
    rule: str = "free",
) -> torch.Tensor:
    """Split each row's ``keep[b] * Hkv`` entries across its KV heads.

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, Hkv, T)`` float32 scores (comparable across heads: attention mass).
    keep : torch.Tensor
        ``(B,)`` int64 on the CPU: the layer's per-head budget for each row (window included).
    forced : torch.Tensor
        ``(B, Hkv, T)`` bool: entries every head keeps anyway (window, sinks).
    candidates : torch.Tensor
        ``(B, T)`` bool, ``False`` on padding; or ``(B, Hkv, T)``, per head (a per-head layer's
        held entries, right-aligned with filler, re-compressed during a chunked prefill).
    alpha : float
        Safeguard ``alpha`` in ``[0, 1]``.
    rule : {"free", "kvpress"}
        What the safeguard guarantees each head beyond its forced entries: ``"free"``,
        ``floor(alpha * k_free)`` of the entries it may choose (``k_free = k - forced``);
        ``"kvpress"``, kvpress's ``AdaKVPress``: its top ``n_safe = max(1, floor(alpha * k))``
        entries by score (``0`` when ``alpha = 0``), forced ones counted first (kvpress scores
        the window above everything), so ``max(0, n_safe - forced)`` more.

    Returns
    -------
    torch.Tensor
        ``(B, Hkv)`` int64 on the CPU; row sums equal ``min(keep[b] * Hkv, candidates of the row)``;
        each entry lies in ``[forced count, the head's candidates]``.

    Examples
    --------
    >>> scores = torch.tensor([[[9., 8., 7., 0., 0.], [1., 1., 1., 0., 0.]]])
    >>> forced = torch.zeros(1, 2, 5, dtype=torch.bool); forced[..., -1] = True
    >>> adaptive_head_budgets(scores, torch.tensor([3]), forced, torch.ones(1, 5, dtype=torch.bool), 0.0).tolist()
    [[4, 2]]
    """
    if rule not in HEAD_FLOOR_RULES:
        raise ValueError(f"head floor rule must be one of {HEAD_FLOOR_RULES}, got {rule!r}.")
    batch, heads, _ = scores.shape
    if candidates.dim() == 2:
        candidates = candidates[:, None, :].expand(-1, heads, -1)  # (B, Hkv, T): the same for every head
    forced = forced & candidates
    forced_count = forced.sum(dim=-1).cpu()  # (B, Hkv)
    check_forced_fit(forced_count, keep[:, None])
    real = candidates.sum(dim=-1).cpu()  # (B, Hkv) candidates per head
    out = torch.empty(batch, heads, dtype=torch.int64)
    for b in range(batch):
        k = int(keep[b])
        if k * heads >= int(real[b].sum()):
            out[b] = real[b]
            continue
        free = forced_count[b].neg() + k  # (Hkv,) per-head choosable entries at uniform split
        if rule == "kvpress":
            safe = max(1, math.floor(k * alpha)) if alpha > 0 else 0
            guaranteed = (safe - forced_count[b]).clamp(min=0)  # (Hkv,) beyond the forced ones
        else:
            guaranteed = torch.floor(free.double() * alpha).long()
        floor = torch.minimum(guaranteed, real[b] - forced_count[b])  # (Hkv,) never beyond a head's entries
        pool = scores[b].float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN ranks lowest, as in the executors
        pool = pool.masked_fill(forced[b] | ~candidates[b], float("-inf"))  # (Hkv, T)
        ranked = torch.sort(pool, dim=-1, descending=True, stable=True).values  # (Hkv, T)
        positions = torch.arange(ranked.shape[-1], device=ranked.device)
        guaranteed = positions[None, :] < floor.to(ranked.device)[:, None]  # each head's top-`floor`
        rest = ranked.masked_fill(guaranteed, float("-inf")).reshape(-1)
        remaining = int(free.sum() - floor.sum())
        picked = torch.zeros(heads, dtype=torch.int64)
        if remaining > 0:
            order = torch.sort(rest, descending=True, stable=True)  # deterministic ties: lower head, better rank
            if not bool(torch.isfinite(order.values[remaining - 1])):
                raise ValueError(f"Row {b}: not enough candidate entries to spend a budget of {k} per head.")
            picked = torch.bincount(order.indices[:remaining].cpu() // ranked.shape[-1], minlength=heads)
        out[b] = forced_count[b] + floor + picked
    if not math.isclose(float(out.sum()), float(sum(min(int(keep[b]) * heads, int(real[b].sum())) for b in range(batch)))):
        raise RuntimeError(f"internal error: head budgets {out.tolist()} do not sum to the layer budget.")
    return out


def safeguard_entries(
    scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor, alpha: float
) -> torch.Tensor:
    """kvpress's AdaKV safeguard as entries: each head's top ``max(1, floor(alpha * k))`` by ``scores``, forced first.

    ``(B, Hkv, T)`` bool. kvpress's ``CriticalAdaKVPress`` gives these entries the largest float
    before its second stage, so they survive whatever their refined scores; the engine keeps them
    as forced entries (``head_floor_rule="kvpress"`` with ``split_heads_on="base"``).

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, Hkv, T)`` float32, the scores the heads were split on.
    keep : torch.Tensor
        ``(B,)`` int64 on the CPU, the layer's per-head budget ``k``.
    forced, candidates : torch.Tensor
        As in :func:`adaptive_head_budgets` (``candidates`` ``(B, T)``).
    alpha : float
        The safeguard.

    >>> scores = torch.tensor([[[5.0, 1.0, 3.0, 0.0]]])
    >>> forced = torch.tensor([[[False, False, False, True]]])
    >>> safeguard_entries(scores, torch.tensor([4]), forced, torch.ones(1, 4, dtype=torch.bool), 0.5).int().tolist()
    [[[1, 0, 0, 1]]]
    """
    safe = torch.tensor([max(1, math.floor(int(k) * alpha)) if alpha > 0 else 0 for k in keep.tolist()])  # (B,)
    counts = safe[:, None].expand(-1, forced.shape[1])  # (B, Hkv): the executors' order, forced first
    return best_entries(scores, counts, forced & candidates[:, None, :], candidates)
