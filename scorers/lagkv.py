"""LagKV scoring: each partition's keys and values judged against the min/max of the next partition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers._rows import from_aligned, row_shift, to_aligned
from kvpress_lab.sinks import AttentionSinks
from kvpress_lab.validation import check_bool, check_choice, check_int

__all__ = ["LagKVScorer", "lag_relative_scores"]


def lag_relative_scores(states: torch.Tensor, lag_size: int) -> torch.Tensor:
    """LagKV statistic of consecutive partitions: ``(B, H, P, L, D) -> (B, H, P - 1, L)`` float32.

    Partition ``p`` is min-max normalised channel-wise with the min and max of partition
    ``p + 1``; its tokens score the (unbiased) std over channels, softmaxed over the partition.
    """
    ref, cur = states[:, :, 1:], states[:, :, :-1]  # (B, H, P - 1, L, D)
    low = ref.amin(dim=-2, keepdim=True)  # (B, H, P - 1, 1, D)
    span = ref.amax(dim=-2, keepdim=True) - low
    span = torch.where(span > 0, span, torch.ones_like(span))  # a constant channel: no rescaling (kvpress: NaN)
    spread = ((cur - low) / span).std(dim=-1)  # (B, H, P - 1, L)
    return spread.softmax(dim=-1)


@dataclass(frozen=True)
class LagKVScorer(AttentionSinks):
    """LagKV: lag-relative statistics of keys and values, partition by partition.

    Based on https://arxiv.org/abs/2504.04704 (LagKV: Lag-Relative Information of the KV Cache
    Tells Which Tokens Are Important), following kvpress's ``LagKVPress``.

    After the first ``num_sinks`` real tokens, the prompt is cut into partitions of ``lag_size``
    tokens. Partition ``p``'s keys are min-max normalised channel-wise with the min/max of
    partition ``p + 1`` (its *lag* reference), each token scores the std over channels of its
    normalised key, softmaxed within the partition, and the same for values; the score is the mean
    of the two. The last full partition (no reference) and the remainder form the *tail*, kept
    (score 1) like the sinks. Without ``cross_scoring`` each partition's scores are replaced by
    their rank within the partition divided by ``lag_size`` (in ``[0, 1)``), so every partition
    contributes alike; with it the softmax scores are compared across partitions. A prompt shorter
    than ``num_sinks + 2 * lag_size`` has no scored partition and scores a recency ramp
    ``(r - num_sinks) / (n - num_sinks)`` on its relative positions ``r``, as in kvpress.

    Parameters
    ----------
    num_sinks : int
        Leading real tokens always kept (:meth:`~kvpress_lab.sinks.AttentionSinks.forced_keep`), ``>= 0``. Default 4 (paper, kvpress).
    lag_size : int
        Partition length ``L``, ``>= 1``. Default 128 (paper, kvpress).
    cross_scoring : bool
        Compare softmax scores across partitions instead of ranks. Default ``False`` (kvpress).
    force_sinks : bool
        Force the sinks (:meth:`~kvpress_lab.sinks.AttentionSinks.forced_keep`). Default ``True``. kvpress only scores them 1, the
        tail's score, which keeps them too; ``False`` leaves the scores as kvpress's alone, so a
        top-k over them (the ``lagkv-kvpress`` preset, ``ties="topk"``) breaks the partitions'
        many ties exactly as kvpress does.

    Notes
    -----
    Partitions start at each row's first real token, so left padding changes nothing. Differences
    from kvpress: sinks are forced (``minimum_budget = num_sinks + W``) and padded positions are never
    counted as tokens; a channel whose reference is constant is not rescaled (kvpress divides by
    zero). Ranks break ties by position (stable sort; ``rank_ties="argsort"``: torch's default,
    unstable ``argsort``, as kvpress ranks, so equal scores inside a partition rank as there).
    Padded positions score 0.
    """

    name: ClassVar[str] = "lagkv"
    num_sinks: int = 4
    lag_size: int = 128
    cross_scoring: bool = False
    force_sinks: bool = True
    rank_ties: str = "position"

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "num_sinks", self.num_sinks, minimum=0)
        check_int(type(self).__name__, "lag_size", self.lag_size, minimum=1)
        check_bool(type(self).__name__, "cross_scoring", self.cross_scoring)
        check_bool(type(self).__name__, "force_sinks", self.force_sinks)
        check_choice(type(self).__name__, "rank_ties", self.rank_ties, ("position", "argsort"))

    def minimum_budget(self, window: int) -> int:
        """Smallest budget holding the (forced) sinks and the window: ``num_sinks + window``."""
        return super().minimum_budget(window) if self.force_sinks else window

    def forced_keep(self, view: LayerView) -> torch.Tensor | None:
        """``(B, Hkv, T)`` bool: the first ``num_sinks`` real tokens of each row (``None`` without ``force_sinks``)."""
        return super().forced_keep(view) if self.force_sinks else None

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 lag-relative scores (sinks and tail 1)."""
        sink, lag, length = self.num_sinks, self.lag_size, view.seq_len
        valid = view.valid.to(view.device)
        shift, real = row_shift(valid)  # (B,), (B,)
        rel = torch.arange(length, device=view.device)[None, :]  # (1, T): position within the prompt
        real = real[:, None]  # (B, 1)
        # Short prompts (kvpress's "no compression" branch): recency ramp after the sinks.
        ramp = (rel - sink).float() / (real - sink).clamp(min=1).float()  # (B, T)
        short = torch.where(rel < sink, 1.0, ramp)[:, None, :].expand(-1, view.num_kv_heads, -1)  # (B, Hkv, T)
        # Long prompts: partitions p with a full reference p + 1 are scored, the rest is the tail.
        parts = (length - sink) // lag if length > sink else 0
        long = torch.ones_like(short)
        if parts >= 2:
            keys = to_aligned(view.keys.float(), shift)[:, :, sink : sink + parts * lag]  # (B, Hkv, P*L, D)
            values = to_aligned(view.values.float(), shift)[:, :, sink : sink + parts * lag]
            shape = (view.batch_size, view.num_kv_heads, parts, lag, keys.shape[-1])
            scores = (lag_relative_scores(keys.view(shape), lag) + lag_relative_scores(values.view(shape), lag)) / 2
            if not self.cross_scoring:  # (B, Hkv, P - 1, L): rank within the partition / L
                stable = self.rank_ties == "position"
                scores = scores.argsort(dim=-1, stable=stable).argsort(dim=-1, stable=stable).float() / lag
            scored = sink + (parts - 1) * lag
            long[:, :, sink:scored] = scores.reshape(view.batch_size, view.num_kv_heads, -1)
        row_parts = (real - sink).clamp(min=0) // lag  # (B, 1): full partitions of the row
        in_scored = (rel >= sink) & ((rel - sink) // lag <= row_parts - 2)  # (B, T)
        long = torch.where(in_scored[:, None, :], long, 1.0)
        is_short = (real < sink + 2 * lag)[:, :, None]  # (B, 1, 1)
        aligned = torch.where(is_short, short, long)  # (B, Hkv, T), relative frame
        aligned = torch.where((rel < real)[:, None, :], aligned, 0.0).nan_to_num(0.0)
        return from_aligned(aligned.contiguous(), shift)
