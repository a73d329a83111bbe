"""Planning: the allocator's budgets of every row and compressible layer, for one prompt.

The engine plans once per prefill (or per chunked prefill, for the whole prompt), and once per
decoding step that compresses. :func:`plan_budgets` asks the recipe's allocator for each row's
per-layer budgets (rows of equal length share one answer unless a ``"global"`` allocator reads
per-row statistics), checks them (:func:`~kvpress_lab.budgets.checked_allocation`) and clamps
them to each row's real tokens: a :class:`BudgetPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvpress_lab.budgets import BudgetSpec, checked_allocation, checked_head_allocation
from kvpress_lab.capabilities import ALLOCATOR
from kvpress_lab.protocols import Allocator

__all__ = ["BudgetPlan", "plan_budgets"]


@dataclass(frozen=True)
class BudgetPlan:
    """Entries to keep per row and compressible layer.

    Parameters
    ----------
    real_lengths : list[int]
        ``n_b``, real (unpadded) tokens of each row.
    keep : torch.Tensor
        ``(B, L)`` int64 on the CPU, ``<= n_b``: entries each row keeps in each compressible layer
        (per KV head; with ``head_keep``, the largest head's).
    budgets : list[list[int]]
        The allocator's raw per-layer budgets for each row (before clamping to ``n_b``); per-head
        allocators give ``L`` lists of ``Hkv``.
    head_keep : torch.Tensor or None
        ``(B, L, Hkv)`` int64 on the CPU: entries each KV head keeps, when the allocator decides
        per head (``per_head``, e.g. ``global_topk`` with ``split="heads"``); ``None`` otherwise.
    """

    real_lengths: list[int]
    keep: torch.Tensor
    budgets: list[list[int]] | list[list[list[int]]]
    head_keep: torch.Tensor | None = None

    def evicts(self, ordinal: int) -> bool:
        """Whether any row drops entries in compressible layer ``ordinal``."""
        kept = self.keep[:, ordinal] if self.head_keep is None else self.head_keep[:, ordinal].amin(dim=-1)
        return any(int(kept[b]) < n for b, n in enumerate(self.real_lengths))


def plan_budgets(
    allocator: Allocator,
    spec: BudgetSpec,
    real_lengths: list[int],
    num_layers: int,
    num_kv_heads: int,
    statistics: torch.Tensor | None = None,
) -> BudgetPlan:
    """Ask ``allocator`` for every row's per-layer budgets.

    Parameters
    ----------
    allocator : Allocator
        The recipe's allocator.
    spec : BudgetSpec
        The recipe's budget numbers.
    real_lengths : list[int]
        ``n_b``, real tokens of each row.
    num_layers : int
        ``L``, compressible layers.
    num_kv_heads : int
        ``Hkv``.
    statistics : torch.Tensor or None
        ``(B, L)`` float32 per-layer statistics for allocators of scope ``"global"``.
    """
    per_head = bool(ALLOCATOR.of(allocator, "per_head"))
    check = checked_head_allocation if per_head else checked_allocation
    per_row: dict[tuple[int, int], list] = {}
    keys = [(n, row if statistics is not None else -1) for row, n in enumerate(real_lengths)]  # static: length only
    for row, (n, key_row) in enumerate(keys):
        if (n, key_row) not in per_row:
            stats = None if statistics is None else statistics[row].detach().float().cpu()
            request = spec.request(num_layers, num_kv_heads, n, stats)
            per_row[(n, key_row)] = check(allocator.allocate(request), request, allocator.name)
    budgets = [per_row[key] for key in keys]
    lengths = torch.tensor(real_lengths, dtype=torch.int64)
    if per_head:
        head_keep = torch.minimum(torch.tensor(budgets, dtype=torch.int64), lengths[:, None, None])  # (B, L, Hkv)
        return BudgetPlan(real_lengths=list(real_lengths), keep=head_keep.amax(dim=-1), budgets=budgets, head_keep=head_keep)
    keep = torch.tensor([[min(b, n) for b in row] for row, n in zip(budgets, real_lengths)], dtype=torch.int64)
    return BudgetPlan(real_lengths=list(real_lengths), keep=keep.reshape(len(real_lengths), num_layers), budgets=budgets)
