"""Compactor scoring: key leverage blended with non-causal chunked attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers.leverage import KEYS, SOLVERS, LeverageScorer, segment_leverage
from kvpress_lab.scorers.non_causal import TAILS, non_causal_scores, row_segments
from kvpress_lab.validation import check_bool, check_choice, check_float, check_int

__all__ = ["CompactorScorer"]


@dataclass(frozen=True)
class CompactorScorer:
    """Compactor: ``blending * z(leverage) + z(non-causal attention)``, the ends protected.

    Based on https://arxiv.org/abs/2507.08143 (Compactor: Calibrated Query-Agnostic KV Cache
    Compression with Approximate Leverage Scores), following kvpress's ``CompactorPress`` (by the
    paper's authors). The first ``sink_size_start`` and last ``sink_size_end`` real tokens are set
    aside; on the others the key leverage (:class:`~kvpress_lab.scorers.leverage.LeverageScorer`)
    and the non-causal chunked attention
    (:class:`~kvpress_lab.scorers.non_causal.NonCausalAttentionScorer`, chunks starting after the
    leading sinks) are each z-scored and blended; the set-aside tokens score the row's maximum
    (``protect="max"``, kvpress: tied with the best other token) or maximum + 1.

    Parameters
    ----------
    blending : float or None
        Weight of the leverage term, ``>= 0``. ``None``: the recipe's ``compression_ratio``, kvpress's
        default (0.35 when the recipe gives an absolute budget, kvpress's fallback). Default 0.35.
    compression_ratio : float or None
        Filled in by the :class:`~kvpress_lab.Recipe` (``recipe_fields``); read when ``blending`` is ``None``.
    sink_size_start : int
        Leading real tokens protected, ``>= 0``. Default 8 (kvpress).
    sink_size_end : int
        Trailing real tokens protected, ``>= 0``. Default 4 (kvpress).
    chunk_size : int
        Non-causal attention chunk, ``>= 1``. Default 256 (kvpress).
    sketch_dimension, seed, keys, solver, centered
        The leverage term's options (:class:`~kvpress_lab.scorers.leverage.LeverageScorer`):
        default exact leverage of the pre-RoPE keys; kvpress: ``sketch_dimension=48, seed=None,
        solver="cholesky"``.
    scaled, tail
        The attention term's options (:class:`~kvpress_lab.scorers.non_causal.NonCausalAttentionScorer`):
        default scaled softmax, exact ragged tail; kvpress: ``scaled=False, tail="kvpress"``.
    protect : {"max_plus_one", "max"}
        The protected tokens' score: the row's maximum + 1 (default) or the maximum itself (kvpress).

    Notes
    -----
    The protected tokens are protected by their score, as in kvpress, not forced, so a budget
    below ``sink_size_start + W`` still works. The ``compactor-kvpress`` preset sets every kvpress
    option; ``compactor`` uses exact leverage, the scaled softmax and the exact tail.
    """

    name: ClassVar[str] = "compactor"
    recipe_fields: ClassVar[tuple[str, ...]] = ("compression_ratio",)
    blending: float | None = 0.35
    compression_ratio: float | None = None
    sink_size_start: int = 8
    sink_size_end: int = 4
    chunk_size: int = 256
    sketch_dimension: int = 0
    seed: int | None = 0
    keys: str = "pre_rope"
    solver: str = "eigh"
    centered: bool = True
    scaled: bool = True
    tail: str = "exact"
    protect: str = "max_plus_one"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.blending is not None:
            check_float(owner, "blending", self.blending, minimum=0.0)
        if self.compression_ratio is not None:
            check_float(owner, "compression_ratio", self.compression_ratio, minimum=0.0, maximum=1.0)
        check_int(owner, "sink_size_start", self.sink_size_start, minimum=0)
        check_int(owner, "sink_size_end", self.sink_size_end, minimum=0)
        check_int(owner, "chunk_size", self.chunk_size, minimum=1)
        check_bool(owner, "scaled", self.scaled)
        check_choice(owner, "tail", self.tail, TAILS)
        check_choice(owner, "keys", self.keys, KEYS)
        check_choice(owner, "solver", self.solver, SOLVERS)
        check_choice(owner, "protect", self.protect, ("max_plus_one", "max"))
        LeverageScorer(self.centered, self.sketch_dimension, self.seed, self.keys, self.solver)  # validates those fields

    @property
    def weight(self) -> float:
        """The leverage term's weight actually used (``blending``, else the ratio, else 0.35)."""
        if self.blending is not None:
            return self.blending
        return 0.35 if self.compression_ratio is None else self.compression_ratio

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 blended scores; protected tokens at (or above) the row's maximum."""
        segments = row_segments(view.valid, self.sink_size_start, self.sink_size_end)
        leverage = LeverageScorer(self.centered, self.sketch_dimension, self.seed, self.keys, self.solver)
        lev = segment_leverage(view, segments, leverage)  # kvpress scores the leverage first (its sketch draw)
        attention, segment = non_causal_scores(view, self.chunk_size, self.sink_size_start, self.sink_size_end,
                                               scaled=self.scaled, tail=self.tail)
        blended = self.weight * lev + attention  # 0 outside the segment
        inside = segment[:, None, :].expand_as(blended)
        top = torch.where(inside, blended, float("-inf")).amax(dim=(1, 2)).nan_to_num(0.0, neginf=0.0)  # (B,)
        if self.protect == "max_plus_one":
            top = top + 1.0
        protected = view.valid.to(view.device)[:, None, :] & ~inside
        return torch.where(protected, top[:, None, None], blended)
