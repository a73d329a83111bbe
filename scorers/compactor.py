"""Compactor scoring: key leverage blended with non-causal chunked attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers._rows import masked_zscore
from kvpress_lab.scorers.leverage import key_leverage
from kvpress_lab.scorers.non_causal import non_causal_scores
from kvpress_lab.validation import check_bool, check_float, check_int

__all__ = ["CompactorScorer"]


@dataclass(frozen=True)
class CompactorScorer:
    """Compactor: ``blending * z(leverage) + z(non-causal attention)``, sinks on top.

    Based on https://arxiv.org/abs/2507.08143 (Compactor: Calibrated Query-Agnostic KV Cache
    Compression with Approximate Leverage Scores), following kvpress's ``CompactorPress``. The
    first ``sink_size_start`` and last ``sink_size_end`` real tokens are set aside; on the others
    the key leverage (:class:`~kvpress_lab.scorers.leverage.LeverageScorer`, centred) and the
    non-causal chunked attention
    (:class:`~kvpress_lab.scorers.non_causal.NonCausalAttentionScorer`, chunks starting after the
    leading sinks) are each z-scored and blended; the set-aside tokens score the row's maximum + 1.

    Parameters
    ----------
    blending : float
        Weight of the leverage term, ``>= 0``. Default 0.35, kvpress's value when it has no
        compression ratio (kvpress's own default ties it to the compression ratio, which a scorer
        does not see: pass ``blending=ratio`` to reproduce that).
    sink_size_start : int
        Leading real tokens protected, ``>= 0``. Default 8 (kvpress).
    sink_size_end : int
        Trailing real tokens protected, ``>= 0``. Default 4 (kvpress).
    chunk_size : int
        Non-causal attention chunk, ``>= 1``. Default 256 (kvpress).
    sketch_dimension : int
        ``0`` (default): exact leverage; ``k > 0``: Gaussian sketch of width ``k`` (kvpress: 48).
    centered : bool
        Centre keys before the leverage. Default ``True`` (kvpress).

    Notes
    -----
    The protected tokens are protected by their score, as in kvpress, not forced, so a budget
    below ``sink_size_start + W`` still works (the recipe's smallest budgets stay open). Differences
    from kvpress (see the two component scorers): post-RoPE keys, exact leverage by default,
    scaled softmax, per-row z-scores, padding excluded everywhere; the protected tokens score
    ``max + 1`` (kvpress: ``max``, tied with the best scored token).
    """

    name: ClassVar[str] = "compactor"
    blending: float = 0.35
    sink_size_start: int = 8
    sink_size_end: int = 4
    chunk_size: int = 256
    sketch_dimension: int = 0
    centered: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_float(owner, "blending", self.blending, minimum=0.0)
        check_int(owner, "sink_size_start", self.sink_size_start, minimum=0)
        check_int(owner, "sink_size_end", self.sink_size_end, minimum=0)
        check_int(owner, "chunk_size", self.chunk_size, minimum=1)
        check_int(owner, "sketch_dimension", self.sketch_dimension, minimum=0)
        check_bool(owner, "centered", self.centered)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 blended scores; protected tokens above every other real token."""
        attention, segment = non_causal_scores(view, self.chunk_size, self.sink_size_start, self.sink_size_end)
        leverage = key_leverage(view.keys, segment, self.centered, self.sketch_dimension)  # (B, Hkv, T)
        blended = self.blending * masked_zscore(leverage, segment) + attention  # 0 outside the segment
        inside = segment[:, None, :].expand_as(blended)
        top = torch.where(inside, blended, float("-inf")).amax(dim=(1, 2)).nan_to_num(0.0, neginf=0.0)  # (B,)
        protected = view.valid.to(view.device)[:, None, :] & ~inside
        return torch.where(protected, top[:, None, None] + 1.0, blended)
