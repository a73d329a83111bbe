"""SnapKV scoring: what the observation window attends to, pooled along tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from kvpress_lab.attention import reduce_groups, window_attention
from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_bool, check_choice, check_int

__all__ = ["SnapKVWindowScorer", "pool_scores"]


def pool_scores(scores: torch.Tensor, kernel_size: int, pooling: str) -> torch.Tensor:
    """1-D pooling along tokens with same-length output: ``(N, H, T) -> (N, H, T)``.

    ``avg`` counts the zero padding at the edges, like the SnapKV/PyramidKV reference.

    >>> pool_scores(torch.tensor([[[0., 3., 0., 0.]]]), 3, "max").tolist()
    [[[3.0, 3.0, 3.0, 0.0]]]
    """
    if kernel_size == 1 or scores.shape[-1] == 0:
        return scores
    batch, heads, length = scores.shape
    flat = scores.reshape(batch * heads, 1, length)
    pool = F.max_pool1d if pooling == "max" else F.avg_pool1d
    return pool(flat, kernel_size=kernel_size, stride=1, padding=kernel_size // 2).reshape(batch, heads, length)


@dataclass(frozen=True)
class SnapKVWindowScorer:
    """SnapKV: attention received from the last ``W`` prompt queries, pooled along tokens.

    Based on https://arxiv.org/abs/2404.14469 (SnapKV), as used by PyramidKV
    (https://arxiv.org/abs/2406.02069).

    Parameters
    ----------
    kernel_size : int
        Odd pooling width along tokens (1 disables pooling). Default 7 (PyramidKV's LongBench runs).
    pooling : {"max", "avg"}
        Pooling type. Default ``"max"``.
    reduction : {"sum", "mean"}
        How the window's ``W`` attention rows are combined. Default ``"sum"``.
    pad_window : bool
        Score every window entry ``max + 1`` (the maximum over the layer's other scores, all rows
        and heads), as kvpress's ``SnapKVPress`` does, instead of its own votes. The engine keeps
        the window either way; the values matter to what reads the scores themselves (kvpress's
        ChunkKV averages them over chunks). Default ``False``.

    Notes
    -----
    Softmax in float32, causal inside the window, padding never attended. Query heads of a GQA
    group are averaged onto their KV head. Pooling covers the tokens before the window only (the
    window itself is always kept), exactly as the reference does.
    """

    name: ClassVar[str] = "snapkv_window"
    chunked_prefill: ClassVar[bool] = True  # scores from the held entries and the current chunk's queries
    needs_window: ClassVar[bool] = True  # scores with the observation window's queries: Recipe refuses window=0
    kernel_size: int = 7
    pooling: str = "max"
    reduction: str = "sum"
    pad_window: bool = False

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "kernel_size", self.kernel_size, minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"{type(self).__name__}.kernel_size must be odd (same-length pooling), got {self.kernel_size}.")
        check_choice(type(self).__name__, "pooling", self.pooling, ("max", "avg"))
        check_choice(type(self).__name__, "reduction", self.reduction, ("sum", "mean"))
        check_bool(type(self).__name__, "pad_window", self.pad_window)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 window-attention votes."""
        probs = window_attention(view)  # (B, Hq, W, T)
        votes = probs.sum(dim=2) if self.reduction == "sum" else probs.mean(dim=2)  # (B, Hq, T)
        votes = reduce_groups(votes, view.num_kv_heads, "mean")  # (B, Hkv, T)
        prefix = view.seq_len - view.window
        pooled = pool_scores(votes[..., :prefix], self.kernel_size, self.pooling)
        window = votes[..., prefix:]
        if self.pad_window and pooled.numel():
            window = torch.full_like(window, float(pooled.max()) + 1)  # kvpress: F.pad(..., value=scores.max() + 1)
        return torch.cat([pooled, window], dim=-1)
