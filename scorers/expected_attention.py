"""Expected Attention scoring: attention that future queries are expected to pay, from query statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.rotary import rotary_rotation_matrices
from kvpress_lab.sinks import AttentionSinks
from kvpress_lab.validation import check_bool, check_float, check_int

__all__ = ["ExpectedAttentionScorer"]


@dataclass(frozen=True)
class ExpectedAttentionScorer(AttentionSinks):
    """Expected Attention: ``softmax_t(mu~ . k_t / sqrt(D) + k_t^T Sigma~ k_t / 2D)``, times ``||v_t||``.

    Based on https://arxiv.org/abs/2510.00636 (Expected Attention: KV Cache Compression by
    Estimating Attention from Future Queries Distribution), whose reference implementation is
    kvpress's ``ExpectedAttentionPress`` (NVIDIA kvpress, https://github.com/NVIDIA/kvpress); this
    scorer follows its arithmetic step by step. Future queries are modelled as Gaussian; for
    ``q ~ N(mu~, Sigma~)``, ``E[exp(q . k / sqrt(D))] = exp(mu~ . k / sqrt(D) + k^T Sigma~ k / 2D)``:

    1. ``mu``, ``Sigma``: mean and (biased) covariance of the *pre-RoPE* queries
       (:meth:`~kvpress_lab.LayerView.queries` with ``rotated=False``) of every prompt token after
       the first ``num_sinks``;
    2. ``R_bar``: the rotary rotation matrix averaged over the next ``n_future_positions``
       positions (:meth:`~kvpress_lab.LayerView.rotary` at ``T ... T + n - 1``, the model's own
       tables), ``mu~ = R_bar mu``, ``Sigma~ = R_bar Sigma R_bar^T``;
    3. the expression above over the cached (rotated) keys after the sinks, softmaxed over them,
       averaged over the query heads of each GQA group, and with ``use_vnorm`` rescaled as
       ``(score + epsilon) * ||v_t||``.

    The first ``num_sinks`` real tokens are forced (:meth:`~kvpress_lab.sinks.AttentionSinks.forced_keep`) and score the row's
    maximum + 1, as kvpress pads them (kvpress: batches of one). ``sqrt(D)`` is the model's own softmax scale
    (``1 / view.scaling``; ``sqrt(D)`` in every family the project supports).

    Parameters
    ----------
    n_future_positions : int
        Future positions the rotation is averaged over, ``>= 1``. Default 512 (kvpress).
    num_sinks : int
        Leading real tokens forced and left out of the statistics and the softmax, ``>= 0``.
        Default 4 (kvpress).
    use_covariance : bool
        Include the ``Sigma~`` term. Default ``True`` (kvpress).
    use_vnorm : bool
        Rescale by value norms. Default ``True`` (kvpress).
    epsilon : float
        Added before the value-norm rescaling, ``>= 0``. Default 0.0 (kvpress; its leaderboard
        entry uses 0.01).

    Notes
    -----
    Each row is scored on its real tokens alone (left padding changes nothing; kvpress supports
    batches of one), its future positions continuing after its last position. Reads the
    prompt's pre-RoPE queries and positions, so it scores one-shot prefills (not chunks).
    Memory: the row's ``(Hq, n, D)`` pre-RoPE queries and ``(Hq, D, D)`` covariances.
    """

    name: ClassVar[str] = "expected_attention"
    n_future_positions: int = 512
    num_sinks: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "n_future_positions", self.n_future_positions, minimum=1)
        check_int(owner, "num_sinks", self.num_sinks, minimum=0)
        check_bool(owner, "use_covariance", self.use_covariance)
        check_bool(owner, "use_vnorm", self.use_vnorm)
        check_float(owner, "epsilon", self.epsilon, minimum=0.0)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 expected attention (sinks above every other real token, padding 0)."""
        scores = torch.zeros(view.batch_size, view.num_kv_heads, view.seq_len, device=view.device)
        counted = view.valid.to(view.device) & ~self.forced_keep(view)[:, 0]  # (B, T): scored tokens
        for row in range(view.batch_size):
            start = view.seq_len - int(view.valid[row].sum()) + self.num_sinks  # first scored token of the row
            if start < view.seq_len:
                scores[row, :, start:] = self._row_scores(view, row, start)
        top = torch.where(counted[:, None, :], scores, float("-inf")).amax(dim=(1, 2)).nan_to_num(0.0, neginf=0.0)  # (B,)
        return torch.where(self.forced_keep(view), top[:, None, None] + 1.0, scores)

    def _row_scores(self, view: LayerView, row: int, start: int) -> torch.Tensor:
        """``(Hkv, T - start)`` scores of one row's tokens ``start:T``, kvpress's operations in its order."""
        heads, groups = view.num_kv_heads, view.num_groups
        queries = view.queries(start, view.seq_len, rotated=False)[row : row + 1].float()  # (1, Hq, n, D)
        mean = queries.mean(dim=2, keepdim=True)  # (1, Hq, 1, D)
        cov = None
        if self.use_covariance:
            centered = queries - mean
            cov = torch.einsum("bnsi,bnsj->bnij", centered, centered) / queries.shape[2]  # (1, Hq, D, D)
        mean, cov = self._average_future_rotation(view, row, mean.squeeze(2), cov)
        keys = view.keys[row : row + 1, :, start:].float()  # (1, Hkv, n, D)
        keys = keys.repeat_interleave(groups, dim=1).transpose(2, 3)  # (1, Hq, D, n)
        inv_scale = 1.0 / view.scaling  # sqrt(D)
        logits = torch.matmul(mean.unsqueeze(2), keys).squeeze(2) / inv_scale  # (1, Hq, n)
        if cov is not None:
            logits = logits + torch.einsum("bhin, bhij, bhjn->bhn", keys, cov, keys) / (inv_scale * inv_scale) / 2
        probs = torch.softmax(logits, dim=-1).view(1, heads, groups, -1).mean(dim=2)  # (1, Hkv, n)
        if self.use_vnorm:
            probs = (probs + self.epsilon) * view.values[row : row + 1, :, start:].float().norm(dim=-1)
        return probs[0]

    def _average_future_rotation(self, view: LayerView, row: int, mean: torch.Tensor,
                                 cov: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``R_bar mu`` and ``R_bar Sigma R_bar^T`` for the row's next ``n_future_positions`` positions."""
        first = int(view.next_positions[row])
        cos, sin = view.rotary(torch.arange(first, first + self.n_future_positions, device=view.device)[None])
        rotation = rotary_rotation_matrices(cos[0].float(), sin[0].float(), view.head_dim).mean(dim=0)  # (D, D)
        mean = torch.matmul(mean, rotation.T)
        if cov is not None:
            cov = torch.matmul(rotation, torch.matmul(cov, rotation.T))
        return mean, cov
