"""Random LayerViews for scorer tests: a fixed random query tensor served in slices."""

from __future__ import annotations

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.rotary import apply_rotary


class SyntheticInputs:
    """:class:`~kvpress_lab.layer_view.LayerInputs` of a made-up RoPE layer: fixed pre-RoPE queries and keys.

    The "hidden state" of token ``t`` is the number ``t`` (``(B, T, 1)``), so the projections look
    the pre-RoPE tensors up; rotary tables are the standard RoPE of ``base`` over ``D`` dimensions.
    """

    def __init__(self, queries: torch.Tensor, keys: torch.Tensor, offset: int = 0, base: float = 10000.0):
        self.q, self.k, self.offset, self.base = queries, keys, offset, base
        batch, _, length, _ = queries.shape
        self.hidden = torch.arange(offset, length, dtype=queries.dtype, device=queries.device)[None, :, None].expand(
            batch, -1, 1)

    def prerope_queries(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.q[:, :, hidden[0, :, 0].long()]

    def prerope_keys(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.k[:, :, hidden[0, :, 0].long()]

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(positions, self.q.shape[-1], self.base, self.q.dtype)


def rope_tables(positions: torch.Tensor, dim: int, base: float = 10000.0, dtype=torch.float32):
    """Standard RoPE ``(cos, sin)`` at ``(B or 1, n)`` positions: ``(B or 1, n, D)`` (halves duplicated)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
    freqs = positions[..., None].double() * inv_freq  # (B, n, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def make_view(
    batch: int = 2,
    kv_heads: int = 2,
    groups: int = 2,
    length: int = 11,
    window: int = 3,
    head_dim: int = 8,
    pad: list[int] | None = None,
    seed: int = 0,
    layer_idx: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LayerView:
    """A view of a made-up RoPE layer whose ``query_fn(a, b)`` returns ``queries[:, :, a:b]`` of a fixed tensor.

    Pre-RoPE queries and keys are random; the cached keys and the queries are those rotated at
    each row's positions (left padding counted as a generate call counts it: the first real token
    is at 0), so the view carries everything a scorer may read (:class:`SyntheticInputs`).
    ``pad[b]`` left-padding tokens in row ``b`` (default none); padded keys/queries are random too,
    so any scorer that looks at them shows up in the results.
    """
    gen = torch.Generator().manual_seed(seed)
    heads = kv_heads * groups
    raw_keys = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(device, dtype)  # (B, Hkv, T, D) pre-RoPE
    values = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(device, dtype)
    raw_queries = torch.randn(batch, heads, length, head_dim, generator=gen).to(device, dtype)  # (B, Hq, T, D) pre-RoPE
    output_projection = torch.randn(5, heads * head_dim, generator=gen).to(device, dtype)  # (hidden=5, Hq * D): W_o
    pad = pad if pad is not None else [0] * batch
    valid = (torch.arange(length)[None, :] >= torch.tensor(pad)[:, None]).to(device)  # (B, T)
    return rope_view(raw_keys, values, raw_queries, valid, window=window, layer_idx=layer_idx,
                     output_projection=output_projection)


def rope_view(raw_keys: torch.Tensor, values: torch.Tensor, raw_queries: torch.Tensor, valid: torch.Tensor,
              window: int = 3, layer_idx: int = 0, output_projection: torch.Tensor | None = None) -> LayerView:
    """The view of pre-RoPE ``(B, Hkv, T, D)`` keys and ``(B, Hq, T, D)`` queries rotated at each row's positions.

    Positions count from each row's first real token (as ``generate`` counts them), so a padded row
    and the same row alone are rotated alike.
    """
    positions = (valid.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
    cos, sin = rope_tables(positions, raw_keys.shape[-1], dtype=raw_keys.dtype)
    keys = apply_rotary(raw_keys, cos[:, None], sin[:, None])
    queries = apply_rotary(raw_queries, cos[:, None], sin[:, None])
    return LayerView(
        layer_idx=layer_idx,
        keys=keys,
        values=values,
        valid=valid,
        window=min(window, keys.shape[2]),
        scaling=keys.shape[-1] ** -0.5,
        num_query_heads=raw_queries.shape[1],
        query_fn=lambda start, stop: queries[:, :, start:stop],
        output_projection=output_projection,
        inputs=SyntheticInputs(raw_queries, raw_keys),
        positions=positions,
    )


def full_queries(view: LayerView) -> torch.Tensor:
    """All ``(B, Hq, T, D)`` queries of ``view``."""
    return view.query_fn(0, view.seq_len)


def brute_force_attention(view: LayerView) -> torch.Tensor:
    """Full causal, padding-masked attention ``(B, Hq, T, T)`` in float64, written independently of the library."""
    q = full_queries(view).cpu().double()
    groups = view.num_groups
    k = view.keys.cpu().double().repeat_interleave(groups, dim=1)  # (B, Hq, T, D)
    valid = view.valid.cpu()
    logits = q @ k.transpose(-1, -2) * view.scaling  # (B, Hq, T, T)
    length = view.seq_len
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal[None, None] & valid[:, None, None, :]
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return probs.masked_fill(~valid[:, None, :, None], 0.0)  # a padded query attends nothing


#: Devices the scorer tests run on: the CPU, plus CUDA when this machine has it.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
