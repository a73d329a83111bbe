"""Merge-on-evict executors: evicted values are folded into their most similar kept entry instead of dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from kvpress_lab.cache_layers import CompressedLayer, RaggedLayer
from kvpress_lab.executors.gather import select_top_k
from kvpress_lab.protocols import Selection
from kvpress_lab.validation import check_float

__all__ = ["MergeExecutor", "RaggedMergeExecutor", "MergeSelection", "merge_evicted_values"]

#: Numerical floor of norms and weights (kvpress's ``_EPS``; safe in float16 and bfloat16).
EPS = 1e-6
_BLOCK = 1024  # evicted tokens compared with the kept ones per step: bounds the (B, Hkv, block, K) similarities


@dataclass(frozen=True)
class MergeSelection(Selection):
    """A :class:`~kvpress_lab.protocols.Selection` that also remembers which tokens were real.

    Parameters
    ----------
    candidates : torch.Tensor
        ``(B, T)`` bool, ``False`` on padding (never merged).
    """

    candidates: torch.Tensor | None = None


def merge_evicted_values(
    keys: torch.Tensor, values: torch.Tensor, selection: Selection, candidates: torch.Tensor, similarity_threshold: float = 0.0
) -> torch.Tensor:
    """Kept values with the evicted ones folded in: ``(B, Hkv, K, D)``, in the selection's slot order.

    Each evicted real entry ``e`` goes to the kept entry ``t`` of the same head whose key is most
    cosine-similar, ``s = cos(k_e, k_t)``; when ``s >= similarity_threshold`` it contributes with
    weight ``w_e = max(s, 0) * ||v_e|| / (||v_e|| + ||v_t|| + eps)``, and every kept entry that
    received something becomes ``(v_t + sum_e w_e v_e) / (1 + sum_e w_e)`` (``v_t`` the kept
    entry's own value before merging). Keys are unchanged. Accumulated in float32.

    Parameters
    ----------
    keys, values : torch.Tensor
        ``(B, Hkv, T, D)``.
    selection : Selection
        ``indices``/``valid`` ``(B, Hkv, K)``, filler slots marked invalid.
    candidates : torch.Tensor
        ``(B, T)`` bool, ``False`` on padding.
    similarity_threshold : float
        Minimum cosine similarity for a merge.
    """
    batch, heads, length, dim = keys.shape
    device = keys.device
    index = selection.indices.to(device)
    slot_valid = selection.valid.to(device)  # (B, Hkv, K)
    gather = index[..., None].expand(-1, -1, -1, dim)
    kept_values = torch.gather(values, 2, gather).float()  # (B, Hkv, K, D)
    kept_units = F.normalize(torch.gather(keys, 2, gather).float(), dim=-1, eps=EPS)
    kept_norms = kept_values.norm(dim=-1)  # (B, Hkv, K)
    kept_mask = torch.zeros(batch, heads, length, dtype=torch.bool, device=device).scatter(2, index, slot_valid)
    evicted = candidates.to(device)[:, None, :] & ~kept_mask  # (B, Hkv, T)
    sums = torch.zeros_like(kept_values)
    weights = torch.zeros_like(kept_norms)
    for start in range(0, length, _BLOCK):
        stop = min(start + _BLOCK, length)
        units = F.normalize(keys[:, :, start:stop].float(), dim=-1, eps=EPS)  # (B, Hkv, n, D)
        sim = (units @ kept_units.transpose(-1, -2)).masked_fill(~slot_valid[:, :, None, :], float("-inf"))  # (B, Hkv, n, K)
        best, target = sim.max(dim=-1)  # (B, Hkv, n)
        block_values = values[:, :, start:stop].float()
        norms = block_values.norm(dim=-1)
        ok = evicted[:, :, start:stop] & (best >= similarity_threshold) & torch.isfinite(best)
        weight = torch.where(ok, best.clamp(min=0) * norms / (norms + kept_norms.gather(2, target) + EPS), 0.0)
        sums.scatter_add_(2, target[..., None].expand(-1, -1, -1, dim), weight[..., None] * block_values)
        weights.scatter_add_(2, target, weight)
    merged = (kept_values + sums) / (1.0 + weights)[..., None]
    return torch.where((weights > 0)[..., None], merged, kept_values).to(values.dtype)


def _check_threshold(owner: object) -> None:
    value = check_float(type(owner).__name__, "similarity_threshold", owner.similarity_threshold, minimum=-1.0, maximum=1.0)
    object.__setattr__(owner, "similarity_threshold", value)


def _merge_selection(selection: Selection, candidates: torch.Tensor) -> MergeSelection:
    return MergeSelection(indices=selection.indices, valid=selection.valid, candidates=candidates)


def _merged(executor: object, keys: torch.Tensor, values: torch.Tensor, selection: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    candidates = getattr(selection, "candidates", None)
    if candidates is None:
        candidates = torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool, device=keys.device)
    index = selection.indices[..., None].expand(-1, -1, -1, keys.shape[-1])
    kept_keys = torch.gather(keys, 2, index)
    return kept_keys, merge_evicted_values(keys, values, selection, candidates, executor.similarity_threshold)


@dataclass(frozen=True)
class MergeExecutor:
    """Dense merge-on-evict: the ``gather`` selection, with evicted values folded into the kept ones.

    Inspired by kvpress's ``MergingPress`` (after Token Merging, https://arxiv.org/abs/2210.09461,
    and D2O, https://arxiv.org/abs/2406.13035) and CaM (Zhang et al., ICML 2024): the rule is :func:`merge_evicted_values`, ``MergingPress``'s with ``merge_fraction=1``.

    Parameters
    ----------
    similarity_threshold : float
        Minimum key cosine similarity for an evicted entry to be merged, in ``[-1, 1]``.
        Default 0.0 (kvpress). Negative similarities carry weight 0 whatever the threshold.

    Notes
    -----
    The kept set is exactly ``gather``'s (forced entries first, ties to the earlier token); only
    the kept values change, keys never do (RoPE-safe). When nothing is evicted the cache equals
    ``gather``'s bit for bit. Padding is never merged. Cost: one ``(T, K)`` similarity per head,
    computed in blocks of 1024 evicted tokens.
    """

    name: ClassVar[str] = "merge"
    per_head_budgets: ClassVar[bool] = False
    merges_values: ClassVar[bool] = True  # kept values are not copies of the prefill's
    similarity_threshold: float = 0.0

    def __post_init__(self) -> None:
        _check_threshold(self)

    def select(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> MergeSelection:
        """``gather``'s top-k (same count in every head of a row), remembering ``candidates``."""
        if bool((keep != keep[:, :1]).any()):
            raise ValueError(
                "The 'merge' executor keeps the same number of entries in every KV head of a row; got per-head counts "
                f"{keep.tolist()}. Use 'merge_ragged' for per-head budgets."
            )
        return _merge_selection(select_top_k(scores, keep, forced, candidates), candidates)

    def build_layer(self, keys: torch.Tensor, values: torch.Tensor, selection: Selection, logical_length: int) -> CompressedLayer:
        """A :class:`~kvpress_lab.cache_layers.CompressedLayer` of the kept keys and merged values."""
        kept_keys, kept_values = _merged(self, keys, values, selection)
        return CompressedLayer(keys=kept_keys, values=kept_values, slot_valid=selection.valid[:, 0, :], logical_length=logical_length)


@dataclass(frozen=True)
class RaggedMergeExecutor:
    """Per-head merge-on-evict: the ``ragged`` selection and storage, with :func:`merge_evicted_values`.

    Parameters
    ----------
    similarity_threshold : float
        As for :class:`MergeExecutor`. Default 0.0.
    """

    name: ClassVar[str] = "merge_ragged"
    per_head_budgets: ClassVar[bool] = True
    merges_values: ClassVar[bool] = True
    similarity_threshold: float = 0.0

    def __post_init__(self) -> None:
        _check_threshold(self)

    def select(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> MergeSelection:
        """Top-``keep[b, h]`` per row and head, remembering ``candidates``."""
        return _merge_selection(select_top_k(scores, keep, forced, candidates), candidates)

    def build_layer(self, keys: torch.Tensor, values: torch.Tensor, selection: Selection, logical_length: int) -> RaggedLayer:
        """A :class:`~kvpress_lab.cache_layers.RaggedLayer` of the kept keys and merged values."""
        kept_keys, kept_values = _merged(self, keys, values, selection)
        return RaggedLayer.from_dense(kept_keys, kept_values, selection.valid, logical_length)
