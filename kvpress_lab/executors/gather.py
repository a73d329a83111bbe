"""Dense top-k selection and gather: every KV head of a row keeps the same number of entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.budgets import check_forced_fit
from kvpress_lab.cache_layers import CompressedLayer, QuantizedLayer
from kvpress_lab.cache_layers.quantized_storage import QUANT_BITS
from kvpress_lab.protocols import Selection
from kvpress_lab.ranking import rank_entries
from kvpress_lab.validation import check_choice, check_int

__all__ = ["GatherExecutor", "select_top_k", "select_top_k_torch", "rank_entries", "TIES"]


def select_top_k(scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> Selection:
    """Forced entries, then the highest scores, per row and head; ties go to the earlier token.

    The order is :func:`rank_entries`: forced entries win whatever the scores, NaN ranks lowest.

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, Hkv, T)`` float32.
    keep : torch.Tensor
        ``(B, Hkv)`` int64 on the CPU: entries to keep per row and head (0 for a row that holds no
        real token yet, such as a left-padded row in the first chunk of a chunked prefill).
    forced : torch.Tensor
        ``(B, Hkv, T)`` bool: entries kept whatever their score.
    candidates : torch.Tensor
        ``(B, T)`` bool: ``False`` on padding, never selected.

    Returns
    -------
    Selection
        ``indices`` ``(B, Hkv, K)`` with ``K = keep.max()``: filler slots first, then the kept
        positions in ascending (original) order.

    Examples
    --------
    >>> scores = torch.tensor([[[0.1, 0.9, 0.3, 0.9, 0.0, 0.2]]])
    >>> forced = torch.tensor([[[False, False, False, False, False, True]]])
    >>> sel = select_top_k(scores, torch.tensor([[3]]), forced, torch.ones(1, 6, dtype=torch.bool))
    >>> sel.indices.tolist()
    [[[1, 3, 5]]]
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (B, Hkv, T), got shape {tuple(scores.shape)}.")
    batch, heads, length = scores.shape
    if keep.shape != (batch, heads):
        raise ValueError(f"keep must be (B, Hkv)={(batch, heads)}, got {tuple(keep.shape)}.")
    if keep.device.type != "cpu":
        raise ValueError("keep must be a CPU tensor (budgets are decided on the host, before any gather).")
    if int(keep.min()) < 0 or int(keep.max()) > length or int(keep.max()) < 1:
        raise ValueError(
            f"keep must lie in [0, T={length}] with at least one entry kept somewhere, got values in "
            f"[{int(keep.min())}, {int(keep.max())}]."
        )
    device = scores.device
    keep_dev = keep.to(device)
    forced = forced & candidates[:, None, :]
    check_forced_fit(forced.sum(dim=-1), keep_dev)
    order = rank_entries(scores, forced, candidates)  # (B, Hkv, T)
    width = int(keep.max())
    top = order[..., :width]  # (B, Hkv, K)
    in_budget = torch.arange(width, device=device) < keep_dev[..., None]  # (B, Hkv, K)
    top = torch.where(in_budget, top, torch.full_like(top, -1))
    top = torch.sort(top, dim=-1).values  # fillers (-1) first, then ascending positions
    valid = top >= 0
    return Selection(indices=top.clamp(min=0), valid=valid)


def select_top_k_torch(scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> Selection:
    """:func:`select_top_k` with ties broken by ``torch.topk`` itself, as kvpress's ``ScorerPress`` does.

    Forced entries score ``+inf`` and padding ``-inf`` (only where there are any: with neither,
    ``torch.topk`` runs on the scorer's tensor untouched, so equal scores go exactly where
    kvpress's call sends them). Kept entries are returned in original order, fillers first.

    >>> scores = torch.tensor([[[0.5, 0.5, 0.5, 0.5]]])
    >>> select_top_k_torch(scores, torch.tensor([[2]]), torch.zeros(1, 1, 4, dtype=torch.bool),
    ...                    torch.ones(1, 4, dtype=torch.bool)).indices.shape
    torch.Size([1, 1, 2])
    """
    forced = forced & candidates[:, None, :]
    check_forced_fit(forced.sum(dim=-1), keep.to(scores.device))
    if bool(forced.any()):
        scores = scores.masked_fill(forced, float("inf"))
    if not bool(candidates.all()):
        scores = scores.masked_fill(~candidates[:, None, :], float("-inf"))
    width = int(keep.max())
    top = scores.topk(width, dim=-1).indices  # (B, Hkv, K), kvpress's call
    in_budget = torch.arange(width, device=scores.device) < keep.to(scores.device)[..., None]
    top = torch.sort(torch.where(in_budget, top, torch.full_like(top, -1)), dim=-1).values
    return Selection(indices=top.clamp(min=0), valid=top >= 0)


#: How equal scores are broken: ``"first"`` (the earlier token, stable, whatever the scores around)
#: or ``"topk"`` (as ``torch.topk`` breaks them, kvpress's rule).
TIES = ("first", "topk")


@dataclass(frozen=True)
class GatherExecutor:
    """Dense executor: keeps the top-``k`` entries of every KV head and gathers them on their device.

    Every head of a row keeps the same number of entries (the layer's budget); rows of a padded
    batch that keep fewer entries get masked filler slots. Ties between equal scores go to the
    earlier token; kept entries stay in their original order.

    Parameters
    ----------
    kv_bits : {None, 8, 4}
        ``None`` (default): keep the kept entries in the model's dtype. ``8`` or ``4``: store them
        as integers, KIVI-style (https://arxiv.org/abs/2402.02750): keys per channel, values per
        token, asymmetric, in blocks of ``group_size`` tokens
        (:class:`~kvpress_lab.cache_layers.quantized.QuantizedLayer`). Every compressible layer is
        then stored quantized after a one-shot prefill, even one whose budget covers the prompt.
    group_size : int
        Tokens per quantized block (KIVI's ``G``, default 32).
    residual_length : int
        Tokens generated during decoding kept in full precision until this many accumulate
        (KIVI's ``R``, default 32).
    ties : {"first", "topk"}
        How equal scores are broken: ``"first"`` (default) keeps the earlier token, whatever the
        other scores; ``"topk"`` leaves it to ``torch.topk`` on the scores, exactly kvpress's
        ``ScorerPress`` (LagKV's rank scores tie by the hundred; the ``*-kvpress`` presets use it).

    Examples
    --------
    >>> GatherExecutor(kv_bits=3)
    Traceback (most recent call last):
    ...
    ValueError: GatherExecutor.kv_bits must be None (no quantization), 8 or 4, got 3.
    """

    name: ClassVar[str] = "gather"
    per_head_budgets: ClassVar[bool] = False
    kv_bits: int | None = None
    group_size: int = 32
    residual_length: int = 32
    ties: str = "first"

    def __post_init__(self) -> None:
        if self.kv_bits is not None and (type(self.kv_bits) is not int or self.kv_bits not in QUANT_BITS):  # not 8.0, not True
            raise ValueError(f"GatherExecutor.kv_bits must be None (no quantization), 8 or 4, got {self.kv_bits!r} "
                             f"of type {type(self.kv_bits).__name__}.")
        check_int("GatherExecutor", "group_size", self.group_size, minimum=1)
        check_int("GatherExecutor", "residual_length", self.residual_length, minimum=1)
        check_choice("GatherExecutor", "ties", self.ties, TIES)

    @property
    def stores_every_layer(self) -> bool:
        """Whether layers are rebuilt even when nothing is evicted (quantized storage)."""
        return self.kv_bits is not None

    def select(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> Selection:
        """See :func:`select_top_k`; all heads of a row must keep the same count."""
        if bool((keep != keep[:, :1]).any()):
            raise ValueError(
                "The 'gather' executor keeps the same number of entries in every KV head of a row; "
                f"got per-head counts {keep.tolist()}. Use the ragged executor for per-head budgets."
            )
        if self.ties == "topk":
            return select_top_k_torch(scores, keep, forced, candidates)
        return select_top_k(scores, keep, forced, candidates)

    def build_layer(self, keys: torch.Tensor, values: torch.Tensor, selection: Selection, logical_length: int) -> CompressedLayer:
        """Gather ``(B, Hkv, T, D)`` into a :class:`CompressedLayer` of ``(B, Hkv, K, D)`` (quantized with ``kv_bits``)."""
        index = selection.indices[..., None].expand(-1, -1, -1, keys.shape[-1])  # (B, Hkv, K, D)
        if self.kv_bits is not None:
            return QuantizedLayer(torch.gather(keys, 2, index), torch.gather(values, 2, index), selection.valid[:, 0, :],
                                  logical_length, bits=self.kv_bits, group_size=self.group_size,
                                  residual_length=self.residual_length)
        return CompressedLayer(
            keys=torch.gather(keys, 2, index),
            values=torch.gather(values, 2, index),
            slot_valid=selection.valid[:, 0, :],
            logical_length=logical_length,
        )
