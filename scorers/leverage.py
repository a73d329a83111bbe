"""Leverage scoring: statistical leverage of each key within its head's key matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers.non_causal import row_segments, zscore
from kvpress_lab.validation import check_bool, check_choice, check_int

__all__ = ["LeverageScorer", "key_leverage", "leverage_scores"]

_RCOND = 1e-10  # eigenvalues of K^T K below this fraction of the largest are treated as zero (pseudo-inverse)
KEYS = ("pre_rope", "cached")
SOLVERS = ("eigh", "cholesky")


def _sketch(keys: torch.Tensor, width: int, seed: int | None) -> torch.Tensor:
    """kvpress's right Gaussian sketch ``(B, H, D, k) / sqrt(k)`` in the keys' dtype and device.

    ``seed=None`` draws from torch's global generator on the keys' device, exactly as kvpress's
    ``LeverageScorePress`` does (one draw per call); an integer draws the same numbers on the CPU
    from ``torch.Generator().manual_seed(seed)`` whatever the device.
    """
    shape = (keys.shape[0], keys.shape[1], keys.shape[-1], width)
    if seed is None:
        return torch.randn(*shape, device=keys.device, dtype=keys.dtype) * (1 / math.sqrt(width))
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=keys.dtype).to(keys.device) * (1 / math.sqrt(width))


def _cholesky_with_jitter(gram: torch.Tensor, jitter: float = 1e-2, tries: int = 5) -> torch.Tensor:
    """kvpress's ``chol_with_jitter``: factor ``G + j I``, ``j`` from 1e-2 up by tens until it succeeds."""
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    current = float(jitter)
    for _ in range(tries):
        factor, info = torch.linalg.cholesky_ex(gram + current * eye, upper=False)
        if bool((info == 0).all()):
            return factor
        current = max(1e-8, 1e-2 if current == 0.0 else 10.0 * current)
    raise RuntimeError(f"Cholesky factorisation of the key Gram matrix failed after {tries} jitter increases.")


def leverage_scores(keys: torch.Tensor, centered: bool = True, sketch_dimension: int = 0, seed: int | None = 0,
                    solver: str = "eigh") -> torch.Tensor:
    """Leverage ``diag(X (X^T X)^+ X^T)`` of the rows of ``X`` (one row's keys, all heads): ``(1, H, n, D) -> (1, H, n)``.

    Parameters
    ----------
    keys : torch.Tensor
        ``(1, H, n, D)``, the ``n`` keys of one row.
    centered : bool
        Subtract the mean key first.
    sketch_dimension : int
        ``k > 0``: leverage of ``X Phi`` with a Gaussian ``(D, k)`` sketch per head (``_sketch``);
        ``0``: exact, no sketch.
    seed : int or None
        The sketch's seed (``None``: torch's global generator, as kvpress).
    solver : {"eigh", "cholesky"}
        ``"eigh"``: exact pseudo-inverse through an eigendecomposition in float64. ``"cholesky"``:
        kvpress's float32 Cholesky solve of ``X^T X + j I`` (jitter ``j`` from 1e-2).

    Returns
    -------
    torch.Tensor
        ``(1, H, n)`` float32, ``>= 0``.
    """
    x = keys - keys.mean(dim=-2, keepdim=True) if centered else keys
    if sketch_dimension > 0:
        x = torch.matmul(x, _sketch(keys, sketch_dimension, seed))  # (1, H, n, k), in the keys' dtype (kvpress)
    if solver == "cholesky":  # kvpress's LeverageScorePress.compute_leverage_scores, line by line
        x = x.to(torch.float32)
        xt = x.transpose(-2, -1)
        gram = xt @ x
        factor = _cholesky_with_jitter(0.5 * (gram + gram.transpose(-2, -1)))
        solved = torch.cholesky_solve(xt, factor, upper=False)  # (X^T X)^-1 X^T
        return (x * solved.transpose(-2, -1)).sum(dim=-1).clamp_min(0)
    x = x.double()  # float64: the Gram matrix keeps its small eigenvalues
    eigenvalues, eigenvectors = torch.linalg.eigh(x.transpose(-1, -2) @ x)  # ascending
    usable = eigenvalues > _RCOND * eigenvalues[..., -1:].clamp(min=0)
    inverse = torch.where(usable & (eigenvalues > 0), 1.0 / eigenvalues, 0.0)  # pseudo-inverse spectrum
    projected = x @ eigenvectors  # (1, H, n, D)
    return (projected.square() * inverse[:, :, None, :]).sum(dim=-1).clamp(min=0).float()


def key_leverage(keys: torch.Tensor, mask: torch.Tensor, centered: bool = True, sketch_dimension: int = 0,
                 seed: int | None = 0, solver: str = "eigh") -> torch.Tensor:
    """:func:`leverage_scores` of each row's masked keys: ``(B, H, T, D)``, ``(B, T)`` bool -> ``(B, H, T)`` float32.

    The mask must be one contiguous run per row (a row's real tokens, or a segment of them);
    other tokens score 0.
    """
    out = torch.zeros(keys.shape[:3], dtype=torch.float32, device=keys.device)
    for row in range(keys.shape[0]):
        where = mask[row].nonzero()
        if where.numel() == 0:
            continue
        start, stop = int(where[0]), int(where[-1]) + 1
        out[row, :, start:stop] = leverage_scores(keys[row : row + 1, :, start:stop], centered, sketch_dimension, seed,
                                                  solver)[0]
    return out


@dataclass(frozen=True)
class LeverageScorer:
    """Leverage: statistical leverage of each key, ``l_t = k_t^T (K^T K)^+ k_t``, z-scored.

    Based on https://arxiv.org/abs/2507.08143 (Compactor: Calibrated Query-Agnostic KV Cache
    Compression with Approximate Leverage Scores), as kvpress's ``LeverageScorePress`` (by the
    paper's authors). ``K`` is the ``(n, D)`` matrix of the row's real *pre-RoPE* keys of one head
    (:meth:`~kvpress_lab.LayerView.prerope_keys`; centred over the sequence by default), and ``l_t``
    the ``t``-th diagonal entry of the hat matrix ``K (K^T K)^+ K^T``: keys that are outliers of the
    head's key geometry score high. Scores are z-scored per row over its heads and real tokens.

    Parameters
    ----------
    centered : bool
        Centre the keys over the sequence first. Default ``True`` (kvpress).
    sketch_dimension : int
        ``0`` (default): exact leverage (``D <= 256`` makes the ``D x D`` eigendecomposition cheap);
        ``k > 0``: leverage of ``K Phi`` with a Gaussian ``(D, k)`` sketch per row and head (kvpress: 48).
    seed : int or None
        Seed of the sketch (only with ``sketch_dimension > 0``). Default 0. ``None`` draws from torch's
        global generator as kvpress does (``torch.manual_seed`` before the prefill reproduces it).
    keys : {"pre_rope", "cached"}
        ``"pre_rope"`` (default, kvpress and the paper): keys before the rotary embedding,
        recomputed from the layer's input; ``"cached"``: the cached, rotated keys.
    solver : {"eigh", "cholesky"}
        ``"eigh"`` (default): exact pseudo-inverse in float64. ``"cholesky"``: kvpress's float32
        Cholesky solve with ``1e-2`` jitter on the Gram matrix.

    Notes
    -----
    The ``leverage-kvpress`` preset (``sketch_dimension=48, seed=None, solver="cholesky"``) is
    kvpress's arithmetic; ``leverage`` is the exact leverage the sketch approximates. Padded
    positions score 0; each row is z-scored alone (kvpress: batches of one). Reads pre-RoPE keys,
    so it scores one-shot prefills.
    """

    name: ClassVar[str] = "leverage"
    centered: bool = True
    sketch_dimension: int = 0
    seed: int | None = 0
    keys: str = "pre_rope"
    solver: str = "eigh"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_bool(owner, "centered", self.centered)
        check_int(owner, "sketch_dimension", self.sketch_dimension, minimum=0)
        if self.seed is not None:
            check_int(owner, "seed", self.seed, minimum=0)
        check_choice(owner, "keys", self.keys, KEYS)
        check_choice(owner, "solver", self.solver, SOLVERS)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 z-scored key leverages (0 on padding)."""
        return segment_leverage(view, row_segments(view.valid), self)


def segment_leverage(view: LayerView, segments: list[tuple[int, int]], options: LeverageScorer) -> torch.Tensor:
    """z-scored leverage of each row's ``(start, stop)`` segment, 0 elsewhere: ``(B, Hkv, T)`` float32."""
    out = torch.zeros(view.batch_size, view.num_kv_heads, view.seq_len, device=view.device)
    for row, (start, stop) in enumerate(segments):
        if stop <= start:
            continue
        keys = view.prerope_keys(start, stop) if options.keys == "pre_rope" else view.keys[:, :, start:stop]
        raw = leverage_scores(keys[row : row + 1], options.centered, options.sketch_dimension, options.seed, options.solver)
        out[row, :, start:stop] = zscore(raw)[0]
    return out
