"""CurDKV scoring: approximate CUR leverage of keys and values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers._rows import from_aligned, row_shift, to_aligned
from kvpress_lab.sinks import AttentionSinks
from kvpress_lab.validation import check_bool, check_choice, check_int

__all__ = ["CURScorer"]

_LEVERAGE_TYPES = ("key", "value", "kv_avg", "kv_product")


@dataclass(frozen=True)
class CURScorer(AttentionSinks):
    """CurDKV: approximate leverage ``||k_t||^2`` and ``||v_t||^2`` (optionally after a random projection).

    Based on https://arxiv.org/abs/2509.15038 (Value-Guided KV Compression for LLMs via
    Approximated CUR Decomposition), following kvpress's ``CURPress`` rule, which this implements;
    the paper's own text could not be consulted here. Row leverages of the (optionally randomly
    projected, ``G`` Gaussian ``(D, 20) / sqrt(20)``) key and value matrices are approximated by
    their squared row norms ``k2_t = ||k_t G||^2`` and ``v2_t = ||v_t G||^2``. With
    ``use_local_approximation`` each is normalised to sum 1 within consecutive windows of
    ``local_window_size`` tokens (from the row's first real token; a ragged last window over its
    own tokens). They are combined per ``leverage_type`` (``k2``, ``v2``, ``(k2 + v2) / 2`` or
    ``k2 * v2``) and normalised to sum 1 over the row's real tokens; the first ``num_sinks`` real
    tokens are forced and score 1.

    Parameters
    ----------
    num_sinks : int
        Leading real tokens kept, ``>= 0``. Default 4 (kvpress).
    leverage_type : {"key", "value", "kv_avg", "kv_product"}
        Default ``"kv_product"`` (kvpress).
    use_random_leverage : bool
        Project keys and values with a fixed Gaussian ``(D, 20)`` matrix first. Default ``False`` (kvpress).
    use_local_approximation : bool
        Normalise within local windows. Default ``True`` (kvpress).
    local_window_size : int
        Default 16 (kvpress).
    seed : int
        Seed of the random projection (CPU generator, the same on every device). Default 0.

    Notes
    -----
    Differences from kvpress: windows start at each row's first real token and padding is left
    out of every sum; the projection is seeded (kvpress draws a fresh one per call); sinks are
    forced (``minimum_budget = num_sinks + W``) and counted from the first real token; an all-zero
    window or row scores 0 instead of NaN. Padded positions score 0.
    """

    name: ClassVar[str] = "cur"
    num_sinks: int = 4
    leverage_type: str = "kv_product"
    use_random_leverage: bool = False
    use_local_approximation: bool = True
    local_window_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_sinks", self.num_sinks, minimum=0)
        check_choice(owner, "leverage_type", self.leverage_type, _LEVERAGE_TYPES)
        check_bool(owner, "use_random_leverage", self.use_random_leverage)
        check_bool(owner, "use_local_approximation", self.use_local_approximation)
        check_int(owner, "local_window_size", self.local_window_size, minimum=1)
        check_int(owner, "seed", self.seed, minimum=0)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 normalised leverage products (sinks 1)."""
        valid = view.valid.to(view.device)
        shift, real = row_shift(valid)
        length = view.seq_len
        inside = torch.arange(length, device=view.device)[None, :] < real[:, None]  # (B, T) aligned
        keys, values = to_aligned(view.keys.float(), shift), to_aligned(view.values.float(), shift)
        if self.use_random_leverage:
            gen = torch.Generator().manual_seed(self.seed)
            proj = (torch.randn(keys.shape[-1], 20, generator=gen) / math.sqrt(20)).to(view.device)
            keys, values = keys @ proj, values @ proj
        k2 = torch.where(inside[:, None, :], keys.square().sum(dim=-1), 0.0)  # (B, Hkv, T)
        v2 = torch.where(inside[:, None, :], values.square().sum(dim=-1), 0.0)
        if self.use_local_approximation:
            k2, v2 = self._local(k2), self._local(v2)
        scores = {"key": lambda: k2, "value": lambda: v2, "kv_avg": lambda: (k2 + v2) / 2,
                  "kv_product": lambda: k2 * v2}[self.leverage_type]()
        total = scores.sum(dim=-1, keepdim=True)
        scores = torch.where(total > 0, scores / total.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
        scores = from_aligned(scores.contiguous(), shift)
        return torch.where(self.forced_keep(view), 1.0, scores)

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, H, T)`` to sum 1 within consecutive windows (zeros stay zeros)."""
        batch, heads, length = x.shape
        w = self.local_window_size
        padded = torch.nn.functional.pad(x, (0, (w - length % w) % w)).view(batch, heads, -1, w)
        total = padded.sum(dim=-1, keepdim=True)
        padded = torch.where(total > 0, padded / total.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
        return padded.reshape(batch, heads, -1)[..., :length]
