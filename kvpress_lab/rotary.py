"""Rotary position embedding (RoPE) algebra shared by the engine and scorers.

Every supported family rotates queries and keys the same way, with ``rotate_half`` on the first
``R`` dimensions of each head (``R = D`` except partial-rotary models such as Phi-3 variants,
whose tables ``cos, sin`` are ``R`` wide) and the rest passed through::

    x_rot = x[..., :R] * cos + rotate_half(x[..., :R]) * sin

A table may carry a scaling factor (YaRN-style ``attention_scaling``: ``cos = a cos(θ)``,
``sin = a sin(θ)``); :func:`undo_rotary` divides it out, so ``undo_rotary(apply_rotary(x))``
is ``x`` whatever the variant. Tables come from the model's own rotary module
(:meth:`kvpress_lab.LayerView.rotary`), so every scaling rule (linear, dynamic, YaRN, llama3,
longrope, Gemma 3's per-layer-type bases) is the model's own.

Examples
--------
>>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
>>> angle = torch.tensor([[0.5, 0.25]])
>>> cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
>>> torch.allclose(undo_rotary(apply_rotary(x, cos, sin), cos, sin), x)
True
"""

from __future__ import annotations

import torch

__all__ = ["rotate_half", "apply_rotary", "undo_rotary", "rotary_rotation_matrices"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the last dimension (the rotary convention of every supported family)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _check_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    rot = cos.shape[-1]
    if cos.shape != sin.shape or rot > x.shape[-1] or rot % 2:
        raise ValueError(
            f"rotary tables must share a shape whose last dimension R is even and <= D={x.shape[-1]}; got cos "
            f"{tuple(cos.shape)} and sin {tuple(sin.shape)}."
        )
    return rot


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(..., n, D)`` by tables ``cos, sin`` ``(..., n, R)`` (broadcast), ``R <= D``.

    The order of operations is transformers' ``apply_rotary_pos_emb``
    (``x * cos + rotate_half(x) * sin``), so a float32 result is bit-identical to the model's.
    """
    rot = _check_tables(x, cos, sin)
    if rot == x.shape[-1]:
        return (x * cos) + (rotate_half(x) * sin)
    head, tail = x[..., :rot], x[..., rot:]
    return torch.cat([(head * cos) + (rotate_half(head) * sin), tail], dim=-1)


def undo_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`apply_rotary`: ``(x cos - rotate_half(x) sin) / (cos^2 + sin^2)`` on the rotary dims.

    The denominator removes a scaling folded into the tables (``cos^2 + sin^2 = a^2``).
    """
    rot = _check_tables(x, cos, sin)
    norm = cos * cos + sin * sin
    head, tail = x[..., :rot], x[..., rot:]
    restored = (head * cos - rotate_half(head) * sin) / norm
    return restored if rot == x.shape[-1] else torch.cat([restored, tail], dim=-1)


def rotary_rotation_matrices(cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    """The ``(n, D, D)`` matrices ``R`` with ``apply_rotary(x, cos, sin) = R x`` for tables ``(n, R)``.

    ``R = diag(cos) + diag(sin) P`` on the rotary dimensions, where ``P`` is the matrix of
    ``rotate_half`` (``P x = rotate_half(x)``), and the identity on the others. Built in the
    tables' dtype, as kvpress's ``ExpectedAttentionPress.apply_avg_rope`` builds it.

    >>> cos, sin = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])  # a quarter turn
    >>> x = torch.tensor([1.0, 2.0])
    >>> torch.allclose(rotary_rotation_matrices(cos, sin, 2)[0] @ x, apply_rotary(x[None], cos, sin)[0])
    True
    """
    count, rot = cos.shape
    half = rot // 2
    eye = torch.eye(dim, device=cos.device, dtype=cos.dtype)
    swap = torch.zeros(dim, dim, device=cos.device, dtype=cos.dtype)  # P: rotate_half on the rotary dims
    swap[half:rot, :half] = torch.eye(half, device=cos.device, dtype=cos.dtype)
    swap[:half, half:rot] = -torch.eye(half, device=cos.device, dtype=cos.dtype)
    pad = dim - rot
    full_cos = torch.cat([cos, cos.new_ones(count, pad)], dim=-1) if pad else cos  # identity beyond the rotary dims
    full_sin = torch.cat([sin, sin.new_zeros(count, pad)], dim=-1) if pad else sin
    return full_cos[:, :, None] * eye + full_sin[:, :, None] * swap
