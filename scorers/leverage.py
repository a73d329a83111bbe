"""Leverage scoring: statistical leverage of each key within its head's key matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers._rows import masked_zscore
from kvpress_lab.validation import check_bool, check_int

__all__ = ["LeverageScorer", "key_leverage"]

_RCOND = 1e-10  # eigenvalues of K^T K below this fraction of the largest are treated as zero (pseudo-inverse)


def key_leverage(keys: torch.Tensor, mask: torch.Tensor, centered: bool = True, sketch_dimension: int = 0,
                 seed: int = 0) -> torch.Tensor:
    """Exact leverage ``diag(X (X^T X)^+ X^T)`` of the rows of ``X``, per row and head.

    Parameters
    ----------
    keys : torch.Tensor
        ``(B, H, T, D)``.
    mask : torch.Tensor
        ``(B, T)`` bool: the tokens forming ``X`` (others contribute nothing and score 0).
    centered : bool
        Subtract the mean over the masked tokens first.
    sketch_dimension : int
        ``k > 0``: right-multiply ``X`` by a fixed Gaussian ``(D, k)`` sketch scaled by ``1/sqrt(k)``
        (drawn from ``seed`` on the CPU, the same on every device, row and head); ``0``: no sketch.

    Returns
    -------
    torch.Tensor
        ``(B, H, T)`` float32 leverages in ``[0, 1]``, summing to the rank of ``X``.
    """
    x = keys.double()  # (B, H, T, D): float64 so that the Gram matrix keeps its small eigenvalues
    keep = mask.to(keys.device)[:, None, :, None]  # (B, 1, T, 1)
    x = torch.where(keep, x, 0.0)
    if centered:
        count = keep.sum(dim=2, keepdim=True).clamp(min=1)
        x = torch.where(keep, x - x.sum(dim=2, keepdim=True) / count, 0.0)
    if sketch_dimension > 0:
        gen = torch.Generator().manual_seed(seed)
        phi = torch.randn(x.shape[-1], sketch_dimension, generator=gen, dtype=torch.float64) / math.sqrt(sketch_dimension)
        x = x @ phi.to(x.device)  # (B, H, T, k)
    gram = x.transpose(-1, -2) @ x  # (B, H, D, D)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    usable = eigenvalues > _RCOND * eigenvalues[..., -1:].clamp(min=0)  # (B, H, D)
    inverse = torch.where(usable & (eigenvalues > 0), 1.0 / eigenvalues, 0.0)  # pseudo-inverse spectrum
    projected = x @ eigenvectors  # (B, H, T, D)
    leverage = (projected.square() * inverse[:, :, None, :]).sum(dim=-1)  # (B, H, T)
    return torch.where(keep[..., 0], leverage, 0.0).clamp(min=0).float()


@dataclass(frozen=True)
class LeverageScorer:
    """Leverage: statistical leverage of each key, ``l_t = k_t^T (K^T K)^+ k_t``, z-scored.

    Based on https://arxiv.org/abs/2507.08143 (Compactor: Calibrated Query-Agnostic KV Cache
    Compression with Approximate Leverage Scores), as kvpress's ``LeverageScorePress``. ``K`` is the
    ``(n, D)`` matrix of the row's real keys of one head (centred over the sequence by default), and
    ``l_t`` the ``t``-th diagonal entry of the hat matrix ``K (K^T K)^+ K^T``: keys that are outliers
    of the head's key geometry score high. Scores are z-scored per row over its heads and real tokens.

    Parameters
    ----------
    centered : bool
        Centre the keys over the sequence first. Default ``True`` (kvpress).
    sketch_dimension : int
        ``0`` (default): exact leverage (``D <= 256`` makes the ``D x D`` eigendecomposition cheap);
        ``k > 0``: leverage of ``K Phi`` with a fixed Gaussian ``(D, k)`` sketch (kvpress: 48).
    seed : int
        Seed of the sketch (used only when ``sketch_dimension > 0``). Default 0.

    Notes
    -----
    Differences from kvpress: kvpress scores *pre-RoPE* keys recomputed from the hidden states; a
    :class:`~kvpress_lab.layer_view.LayerView` holds only the cached (rotary applied) keys, so this
    scores those. kvpress always sketches (``k = 48``, a fresh random sketch per call, per row and
    head) and solves with a jittered Cholesky factor; here the default is exact (pseudo-inverse
    through an eigendecomposition in float64) and a sketch, if asked for, is seeded and shared.
    kvpress z-scores over the whole batch; here each row is z-scored alone, so left padding and
    batch neighbours change nothing (identical for a batch of one). Padded positions score 0.
    """

    name: ClassVar[str] = "leverage"
    centered: bool = True
    sketch_dimension: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_bool(type(self).__name__, "centered", self.centered)
        check_int(type(self).__name__, "sketch_dimension", self.sketch_dimension, minimum=0)
        check_int(type(self).__name__, "seed", self.seed, minimum=0)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 z-scored key leverages."""
        valid = view.valid.to(view.device)
        leverage = key_leverage(view.keys, valid, self.centered, self.sketch_dimension, self.seed)  # (B, Hkv, T)
        return masked_zscore(leverage, valid)
