"""Expected Attention scoring: attention that future queries are expected to pay, from query statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import einops
import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_bool, check_float, check_int

__all__ = ["ExpectedAttentionScorer"]


@dataclass(frozen=True)
class ExpectedAttentionScorer:
    """Expected Attention: ``softmax_t(s mu.k_t + s^2/2 k_t^T Sigma k_t)``, times ``||v_t||``.

    Based on kvpress's ``ExpectedAttentionPress`` (NVIDIA kvpress, https://github.com/NVIDIA/kvpress;
    paper https://arxiv.org/abs/2510.00636, Expected Attention: KV Cache Compression by Estimating
    Attention from Future Queries Distribution). Future queries are modelled as Gaussian with mean
    ``mu`` and covariance ``Sigma``; for ``q ~ N(mu, Sigma)``,
    ``E[exp(s q.k)] = exp(s mu.k + s^2/2 k^T Sigma k)`` with ``s = view.scaling`` (``1/sqrt(D)``, so
    this is kvpress's ``mu.k/sqrt(D) + k^T Sigma k / (2D)``). The scores are softmaxed over the
    row's real tokens after the sinks, averaged over the query heads of each GQA group, and, with
    ``use_vnorm``, rescaled as ``(score + epsilon) * ||v_t||``. The first ``n_sink`` real tokens are
    forced (:meth:`forced_keep`) and score the row's maximum + 1.

    Parameters
    ----------
    n_window : int
        The statistics come from the queries of the last ``n_window`` prompt tokens, ``>= 0``
        (``0``: every prompt query). Default 512, the size of kvpress's future span (see Notes).
    n_sink : int
        Leading real tokens forced and left out of the statistics and the softmax, ``>= 0``. Default 4 (kvpress).
    use_covariance : bool
        Include the ``Sigma`` term. Default ``True`` (kvpress).
    use_vnorm : bool
        Rescale by value norms. Default ``True`` (kvpress).
    epsilon : float
        Added before the value-norm rescaling, ``>= 0``. Default 0.0 (kvpress).

    Notes
    -----
    **Approximation (differs from kvpress).** kvpress takes the mean and covariance of the
    *pre-RoPE* queries (after the sinks), rotates them with the RoPE rotation averaged over the
    next ``n_future_positions = 512`` positions, ``mu~ = R_bar mu`` and ``Sigma~ = R_bar Sigma R_bar^T``,
    and scores the cached (post-RoPE) keys. A :class:`~kvpress_lab.layer_view.LayerView` only
    yields *post-RoPE* queries and does not carry the rotary frequencies, so pre-RoPE statistics
    cannot be recovered. Instead ``mu`` and ``Sigma`` are the (biased) mean and covariance of the
    post-RoPE queries of the last ``n_window`` real, non-sink prompt tokens: future queries are
    modelled by the recent queries *at their own positions*. If pre-RoPE queries do not depend on
    position, the post-RoPE mean over ``N`` consecutive positions is ``R_bar_window mu``, the same
    rotation average as kvpress's over ``N`` positions except for its phase, which is centred
    ``N`` positions earlier: with ``N = 512`` the attenuation of each rotary frequency matches
    kvpress's exactly and only frequencies ``theta`` with ``512 theta`` not small are phase-shifted
    (they are the ones both averages damp most). The post-RoPE covariance also includes the
    spread due to the rotation itself (kvpress's ``R_bar Sigma R_bar^T`` does not). No
    ``n_future_positions`` field, since no rotation is applied. Padded tokens never enter the
    statistics or the softmax; with no usable query (a prompt of ``<= n_sink`` tokens), ``mu = 0``,
    ``Sigma = 0``: uniform scores.
    """

    name: ClassVar[str] = "expected_attention"
    n_window: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "n_window", self.n_window, minimum=0)
        check_int(owner, "n_sink", self.n_sink, minimum=0)
        check_bool(owner, "use_covariance", self.use_covariance)
        check_bool(owner, "use_vnorm", self.use_vnorm)
        check_float(owner, "epsilon", self.epsilon, minimum=0.0)

    def minimum_budget(self, window: int) -> int:
        """Smallest budget holding the sinks and the window: ``n_sink + window``."""
        return self.n_sink + window

    def forced_keep(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` bool: the first ``n_sink`` real tokens of each row."""
        valid = view.valid.to(view.device)
        sinks = valid & (valid.long().cumsum(dim=-1) <= self.n_sink)
        return sinks[:, None, :].expand(-1, view.num_kv_heads, -1).contiguous()

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 expected attention (sinks above every other real token)."""
        length, num_kv = view.seq_len, view.num_kv_heads
        valid = view.valid.to(view.device)
        sinks = valid & (valid.long().cumsum(dim=-1) <= self.n_sink)  # (B, T)
        counted = valid & ~sinks  # (B, T): tokens scored and whose queries give the statistics
        start = 0 if self.n_window == 0 else max(length - self.n_window, 0)
        queries = view.queries(start, length).float()  # (B, Hq, Q, D), rotary applied
        use = counted[:, None, start:, None]  # (B, 1, Q, 1)
        count = use.sum(dim=2, keepdim=True).clamp(min=1)  # (B, 1, 1, 1)
        mean = torch.where(use, queries, 0.0).sum(dim=2, keepdim=True) / count  # (B, Hq, 1, D)
        keys = view.keys.float()  # (B, Hkv, T, D)
        mean = einops.rearrange(mean[:, :, 0], "b (h g) d -> b h g d", h=num_kv)
        logits = torch.einsum("bhgd,bhtd->bhgt", mean, keys) * view.scaling  # (B, Hkv, G, T)
        if self.use_covariance:
            centered = torch.where(use, queries - einops.rearrange(mean, "b h g d -> b (h g) 1 d"), 0.0)
            cov = torch.einsum("bnqi,bnqj->bnij", centered, centered) / count  # (B, Hq, D, D)
            cov = einops.rearrange(cov, "b (h g) i j -> b h g i j", h=num_kv)
            logits = logits + torch.einsum("bhti,bhgij,bhtj->bhgt", keys, cov, keys) * (view.scaling**2 / 2)
        logits = logits.masked_fill(~counted[:, None, None, :], float("-inf"))
        scores = torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(dim=2)  # (B, Hkv, T)
        if self.use_vnorm:
            scores = (scores + self.epsilon) * torch.linalg.vector_norm(view.values.float(), dim=-1)
        scores = torch.where(counted[:, None, :], scores, 0.0)
        top = scores.amax(dim=(1, 2))  # (B,) scores are >= 0
        return torch.where(sinks[:, None, :], top[:, None, None] + 1.0, scores)
