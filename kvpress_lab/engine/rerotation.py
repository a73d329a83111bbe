"""Key re-rotation (StreamingLLM, Finch, kvpress's KeyRerotationPress): kept keys at contiguous positions.

After eviction the kept keys of a head still carry the rotary phases of their original
positions, with gaps where entries were evicted. ``Recipe(rerotate_keys=True)`` re-rotates
them so that, per ``(row, layer, head)``, the ``k`` kept keys sit at ``k`` *contiguous*
positions that end right before the next token: the ``j``-th kept key (in original order) takes
the position of the ``(k - j)``-th last real prompt token. Rotary attention depends only on
position differences, so the next token at its true position ``N`` sees the kept keys at
distances ``k, k-1, ..., 1``: exactly what it would see with the kept keys placed at ``0..k-1``
and itself at ``k``, StreamingLLM's "positions within the cache". Decoding therefore continues
at the true positions and needs no change of ``position_ids``; layers that keep different
counts (pyramid budgets), per-head layers and left-padded rows all stay consistent, and
uncompressed layers (Gemma3's sliding-window layers, layers within budget) are untouched.

The rotation is computed from the rotary tables ``(cos, sin)`` the layer itself received during
the prefill, so every RoPE variant (scaling, partial rotary) is honoured exactly as the model
applied it: an entry moves from position ``p`` to ``p'`` by the rotation of angle ``θ(p') - θ(p)``,
``cos Δ = (c' c + s' s) / (c² + s²)`` and ``sin Δ = (s' c - c' s) / (c² + s²)`` (the denominator
removes any attention scaling folded into the tables), applied with ``rotate_half`` on the
rotary dimensions. In float32 models this matches an explicit re-rotation to ``1e-5``; in
bfloat16 models the tables' rounding adds an error of the order of the model's own rotary
rounding.
"""

from __future__ import annotations

import torch

from kvpress_lab.protocols import Selection
from kvpress_lab.rotary import rotate_half

__all__ = ["rerotate_kept_keys"]


def _tables_at(table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` ``(B or 1, T, R)`` at ``slots`` ``(B, Hkv, K)`` -> ``(B, Hkv, K, R)`` float32."""
    batch, heads, width = slots.shape
    table = table.float().expand(batch, -1, -1)  # (B, T, R)
    flat = slots.reshape(batch, heads * width)
    gathered = torch.gather(table, 1, flat[..., None].expand(-1, -1, table.shape[-1]))  # (B, Hkv*K, R)
    return gathered.view(batch, heads, width, table.shape[-1])


def rerotate_kept_keys(
    keys: torch.Tensor, selection: Selection, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Keys with every kept entry re-rotated to its contiguous position; evicted entries unchanged.

    Parameters
    ----------
    keys : torch.Tensor
        ``(B, Hkv, T, D)`` prefill keys, rotary applied at the prompt's positions.
    selection : Selection
        The kept entries: ``indices`` ``(B, Hkv, K)``, filler slots first, kept ones ascending.
    position_embeddings : tuple of torch.Tensor
        ``(cos, sin)``, each ``(B or 1, T, R)`` with ``R <= D`` rotary dimensions: the tables the
        layer received for the ``T`` prompt tokens (slot ``t`` of the cache).

    Returns
    -------
    torch.Tensor
        ``(B, Hkv, T, D)``, a new tensor: kept slot ``s`` of a head (of ``K``) holds the key of its
        original token rotated to the position of cache slot ``T - K + s``.

    Examples
    --------
    >>> import math
    >>> angle = torch.arange(4.0)[None, :, None] * torch.tensor([1.0])  # positions 0..3, one frequency
    >>> cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)  # (1, 4, 2)
    >>> raw = torch.tensor([1.0, 0.0]).expand(1, 1, 4, 2)
    >>> keys = raw * cos[:, None] + rotate_half(raw) * sin[:, None]  # rotated at 0..3
    >>> sel = Selection(torch.tensor([[[0, 3]]]), torch.tensor([[[True, True]]]))
    >>> moved = rerotate_kept_keys(keys, sel, (cos, sin))  # token 0 -> position 2, token 3 stays at 3
    >>> torch.allclose(moved[0, 0, 0], torch.tensor([math.cos(2.0), math.sin(2.0)]), atol=1e-6)
    True
    """
    cos, sin = position_embeddings
    batch, heads, length, dim = keys.shape
    rot = cos.shape[-1]
    if cos.shape != sin.shape or cos.shape[-2] != length or rot > dim or rot % 2:
        raise ValueError(
            f"rotary tables must be (B or 1, T={length}, R) with an even R <= D={dim}, got cos {tuple(cos.shape)} and "
            f"sin {tuple(sin.shape)}."
        )
    width = selection.indices.shape[-1]
    origin = selection.indices.to(keys.device)  # (B, Hkv, K)
    target = (length - width + torch.arange(width, device=keys.device)).expand(batch, heads, -1)  # (B, Hkv, K)
    c0, s0 = _tables_at(cos.to(keys.device), origin), _tables_at(sin.to(keys.device), origin)  # (B, Hkv, K, R)
    c1, s1 = _tables_at(cos.to(keys.device), target), _tables_at(sin.to(keys.device), target)
    norm = c0 * c0 + s0 * s0
    delta_cos, delta_sin = (c1 * c0 + s1 * s0) / norm, (s1 * c0 - c1 * s0) / norm
    index = origin[..., None].expand(-1, -1, -1, dim)
    kept = torch.gather(keys, 2, index).float()  # (B, Hkv, K, D)
    head, tail = kept[..., :rot], kept[..., rot:]
    moved = torch.cat([head * delta_cos + rotate_half(head) * delta_sin, tail], dim=-1).to(keys.dtype)
    rows, heads_idx, slots = selection.valid.to(keys.device).nonzero(as_tuple=True)  # kept slots only: unique tokens
    out = keys.clone()
    out[rows, heads_idx, origin[rows, heads_idx, slots]] = moved[rows, heads_idx, slots]
    return out
