"""Row helpers shared by the query-agnostic scorers: left-aligning padded rows and masked statistics.

Rows are left padded (``view.valid`` is a suffix of each row). Methods whose rule depends on a
token's position *within the prompt* (LagKV partitions, Compactor chunks, CurDKV local windows)
are computed in an *aligned frame*: each row is rotated so that its first counted token sits at
index 0, every row then obeys the same partition boundaries, and the result is rotated back.
"""

from __future__ import annotations

import torch

__all__ = ["row_shift", "to_aligned", "from_aligned", "masked_zscore"]


def row_shift(valid: torch.Tensor, skip_start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T)`` bool -> ``shift (B,)`` int64 (first counted token) and ``length (B,)`` int64 (real tokens)."""
    length = valid.sum(dim=-1)  # (B,)
    pad = valid.shape[-1] - length
    return pad + skip_start, length


def _rotate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``out[b, :, a] = x[b, :, (a + shift[b]) % T]`` for ``x`` of shape ``(B, H, T, ...)``."""
    length = x.shape[2]
    index = (torch.arange(length, device=x.device)[None, :] + shift[:, None]) % length  # (B, T)
    index = index.view(x.shape[0], 1, length, *([1] * (x.dim() - 3))).expand(-1, x.shape[1], -1, *x.shape[3:])
    return torch.gather(x, 2, index)


def to_aligned(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate ``(B, H, T, ...)`` rows left by ``shift[b]``: token ``shift[b]`` lands at index 0."""
    return _rotate(x, shift.to(x.device))


def from_aligned(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_aligned`."""
    return _rotate(x, (-shift.to(x.device)) % x.shape[2])


def masked_zscore(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Z-score ``(B, H, T)`` per row over its heads and the ``mask`` ``(B, T)`` entries; 0 elsewhere.

    The standard deviation is the unbiased one (``torch.std``), clamped below at ``1e-6`` (kvpress).
    """
    keep = mask[:, None, :].expand_as(scores)  # (B, H, T)
    count = keep.sum(dim=(1, 2)).to(scores.dtype)  # (B,)
    mean = torch.where(keep, scores, 0.0).sum(dim=(1, 2)) / count.clamp(min=1)  # (B,)
    centered = torch.where(keep, scores - mean[:, None, None], 0.0)  # junk outside the mask never leaks
    var = centered.square().sum(dim=(1, 2)) / (count - 1).clamp(min=1)
    std = var.sqrt().clamp(min=1e-6)
    return centered / std[:, None, None]
