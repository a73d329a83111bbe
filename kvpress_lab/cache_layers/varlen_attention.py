"""Decoding attention over a ragged cache through a variable-length kernel (flash-attn's contract).

A :class:`~kvpress_lab.cache_layers.ragged.RaggedLayer` stores the kept entries of every
``(row, KV head)`` segment back to back. Treating each segment as one sequence with a single KV
head and its ``G = Hq / Hkv`` query heads, that flat storage *is* the packed input of
``flash_attn_varlen_func``: keys ``(N, 1, D)``, ``cu_seqlens_k`` from the segment lengths, and
queries ``(S * q, G, D)`` with ``S = B * Hkv`` segments of ``q`` new tokens each. No dense padded
view is built.

Any function with flash-attn's varlen signature can serve as the kernel:

* :func:`flash_attn_kernel` — flash-attn 2's CUDA kernel (what ``attn_implementation=
  "flash_attention_2"`` selects);
* :func:`reference_varlen_attention` — an exact PyTorch loop over the sequences, the executable
  statement of the contract, used by the CPU tests and to check the CUDA kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import AttentionInterface

from kvpress_lab.cache_layers.protocol import VarlenKernel

__all__ = [
    "FlatSegments",
    "RAGGED_VARLEN_IMPLEMENTATION",
    "RaggedAttentionCall",
    "VarlenKernel",
    "flash_attn_kernel",
    "ragged_kernel_for",
    "ragged_varlen_attention",
    "reference_varlen_attention",
    "varlen_attention_over_layer",
]

RAGGED_VARLEN_IMPLEMENTATION = "kvpress_lab_ragged_varlen"
"""Name under which :func:`ragged_varlen_attention` is registered in transformers' ``AttentionInterface``."""

CALL_KWARG = "kvpress_lab_ragged"
"""Keyword through which the decoding hooks hand the :class:`RaggedAttentionCall` to the attention function."""


class FlatSegments(Protocol):
    """What the varlen path reads of a ragged layer (:class:`~kvpress_lab.cache_layers.ragged.RaggedLayer`).

    ``flat_keys`` / ``flat_values`` are ``(N, D)``: the kept entries of every ``(row, KV head)``
    segment back to back; ``lengths`` is ``(B, Hkv)`` int64 on the CPU, the segment lengths.
    """

    @property
    def flat_keys(self) -> torch.Tensor: ...

    @property
    def flat_values(self) -> torch.Tensor: ...

    @property
    def lengths(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class RaggedAttentionCall:
    """What one ragged layer's attention needs besides the module's own arguments."""

    layer: FlatSegments
    kernel: VarlenKernel


# -- kernels -------------------------------------------------------------------------------------


def reference_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    softcap: float = 0.0,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Exact variable-length attention, one sequence at a time (float32 math).

    Follows :class:`VarlenKernel`; ``softcap > 0`` applies ``softcap * tanh(s / softcap)`` to the
    scaled scores, as flash-attn does. A query row that sees no key gets a zero output.

    >>> q = torch.randn(3, 2, 4); k = torch.randn(5, 1, 4); v = torch.randn(5, 1, 4)
    >>> cu_q = torch.tensor([0, 1, 3], dtype=torch.int32); cu_k = torch.tensor([0, 2, 5], dtype=torch.int32)
    >>> reference_varlen_attention(q, k, v, cu_q, cu_k, 2, 3, causal=True).shape
    torch.Size([3, 2, 4])
    """
    if dropout_p:
        raise ValueError(f"reference_varlen_attention is deterministic: dropout_p must be 0, got {dropout_p}.")
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"expected q (total_q, Hq, D) and k, v (total_k, Hk, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}."
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key heads ({k.shape[1]}).")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k {tuple(cu_seqlens_k.shape)} must match.")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    groups = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        if q1 == q0 or k1 == k0:
            continue
        queries = q[q0:q1].transpose(0, 1).float()  # (Hq, Lq, D)
        keys = k[k0:k1].transpose(0, 1).float().repeat_interleave(groups, dim=0)  # (Hq, Lk, D)
        values = v[k0:k1].transpose(0, 1).float().repeat_interleave(groups, dim=0)
        scores = queries @ keys.transpose(-1, -2) * scale  # (Hq, Lq, Lk)
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        if causal:
            length_q, length_k = q1 - q0, k1 - k0
            last_visible = torch.arange(length_q, device=q.device) + (length_k - length_q)  # (Lq,)
            hidden = torch.arange(length_k, device=q.device)[None, :] > last_visible[:, None]  # (Lq, Lk)
            scores = scores.masked_fill(hidden, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows seeing no key -> 0
        out[q0:q1] = (weights @ values).transpose(0, 1).to(q.dtype)
    return out


def flash_attn_kernel() -> VarlenKernel:
    """flash-attn 2's ``flash_attn_varlen_func``, wrapped to accept float32 tensors.

    The CUDA kernel computes in float16/bfloat16 only; float32 inputs are cast to bfloat16 (or the
    active autocast dtype) and the output cast back, as transformers' flash path does.

    Raises
    ------
    ImportError
        When flash-attn is not installed (``pip install -e ".[gpu]"`` on a CUDA machine).
    """
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as error:
        raise ImportError(
            "Decoding a ragged (per-head) cache with attn_implementation='flash_attention_2' needs flash-attn's "
            "variable-length kernel, but `flash_attn` cannot be imported. Install the GPU extra "
            "(pip install -e \".[gpu]\") or load the model with attn_implementation='sdpa'."
        ) from error

    def kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, softmax_scale=None, causal=False, softcap=0.0):
        dtype = q.dtype
        if dtype == torch.float32:
            target = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            q, k, v = q.to(target), k.to(target), v.to(target)
        extra = {"softcap": softcap} if softcap else {}  # flash-attn < 2.6 has no softcap argument
        out = flash_attn_varlen_func(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
            dropout_p=0.0, softmax_scale=softmax_scale, causal=causal, **extra,
        )
        return out.to(dtype)

    return kernel


def ragged_kernel_for(implementation: str | None) -> VarlenKernel | None:
    """The varlen kernel ragged layers decode with under ``attn_implementation``, or ``None`` for dense masks.

    ``"sdpa"`` and ``"eager"`` decode on a transient dense view with per-head masks (``None``);
    ``"flash_attention_2"`` uses :func:`flash_attn_kernel`.

    Raises
    ------
    NotImplementedError
        For any other implementation (flex attention, flash-attention 3/4, hub kernels).
    """
    if implementation in ("sdpa", "eager"):
        return None
    if implementation == "flash_attention_2":
        return flash_attn_kernel()
    raise NotImplementedError(
        "Ragged (per-head) caches decode with attn_implementation 'sdpa', 'eager' or 'flash_attention_2'; "
        f"got {implementation!r}. Pass `ragged_kernel=` to enable_compressed_decoding to use another varlen kernel."
    )


# -- the attention function ----------------------------------------------------------------------


def ragged_varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention of ``(B, Hq, q, D)`` queries over a ragged layer's flat ``(N, D)`` keys and values.

    Registered in transformers' ``AttentionInterface`` as :data:`RAGGED_VARLEN_IMPLEMENTATION`;
    the decoding hooks select it for ragged layers only and pass the layer and kernel as the
    ``kvpress_lab_ragged`` keyword (a :class:`RaggedAttentionCall`). ``key`` and ``value`` are
    what :meth:`RaggedLayer.update <kvpress_lab.cache_layers.ragged.RaggedLayer.update>` returned in flat mode, the new tokens already appended to
    every segment. ``attention_mask`` is ignored: causality and segment bounds come from the
    lengths. Returns ``(B, q, Hq, D)`` and no weights, like transformers' other functions.
    """
    call = kwargs.get(CALL_KWARG)
    if not isinstance(call, RaggedAttentionCall):
        raise TypeError(
            f"{RAGGED_VARLEN_IMPLEMENTATION!r} attends over ragged cache layers only; it needs a RaggedAttentionCall "
            f"in the {CALL_KWARG!r} keyword, got {type(call).__name__}."
        )
    if dropout:
        raise ValueError(f"Ragged decoding runs without dropout; got dropout={dropout} (put the model in eval mode).")
    if sliding_window is not None:
        raise ValueError(f"Ragged layers replace full-attention layers only; got sliding_window={sliding_window}.")
    layer = call.layer
    if key is not layer.flat_keys or value is not layer.flat_values:
        raise ValueError("key/value must be the ragged layer's flat storage (RaggedLayer.update in flat mode).")
    return varlen_attention_over_layer(query, layer, call.kernel, scaling=scaling, softcap=softcap or 0.0), None


def varlen_attention_over_layer(
    query: torch.Tensor, layer: FlatSegments, kernel: VarlenKernel, *, scaling: float | None, softcap: float = 0.0
) -> torch.Tensor:
    """``(B, Hq, q, D)`` queries of the newest ``q`` tokens over ``layer`` → ``(B, q, Hq, D)``.

    ``layer`` already holds the ``q`` new entries at the end of each segment.
    """
    batch, query_heads, new, head_dim = query.shape
    rows, kv_heads = layer.lengths.shape
    if rows != batch or query_heads % kv_heads:
        raise ValueError(
            f"queries are (B, Hq)={(batch, query_heads)}; the ragged layer holds (B, Hkv)={(rows, kv_heads)} "
            "(expected equal B and Hq a multiple of Hkv)."
        )
    groups = query_heads // kv_heads
    segments = batch * kv_heads
    device = query.device
    # (B, Hkv*G, q, D) -> (B, Hkv, q, G, D) -> (S*q, G, D): one sequence of q tokens per (row, KV head)
    packed_q = query.reshape(batch, kv_heads, groups, new, head_dim).transpose(2, 3).reshape(segments * new, groups, head_dim)
    lengths = layer.lengths.reshape(-1)
    cu_seqlens_k = torch.zeros(segments + 1, dtype=torch.int32)
    cu_seqlens_k[1:] = lengths.cumsum(0)
    cu_seqlens_q = torch.arange(segments + 1, dtype=torch.int32, device=device) * new
    extra = {"softcap": softcap} if softcap else {}  # kernels without logit soft-capping need not accept it
    out = kernel(
        packed_q,
        layer.flat_keys[:, None, :].to(query.dtype),
        layer.flat_values[:, None, :].to(query.dtype),
        cu_seqlens_q,
        cu_seqlens_k.to(device, non_blocking=True),
        new,
        int(lengths.max()),
        softmax_scale=scaling,
        causal=True,
        **extra,
    )  # (S*q, G, D)
    return out.reshape(batch, kv_heads, new, groups, head_dim).transpose(1, 2).reshape(batch, new, query_heads, head_dim)


AttentionInterface.register(RAGGED_VARLEN_IMPLEMENTATION, ragged_varlen_attention)
