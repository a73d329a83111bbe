"""Random LayerViews for scorer tests: a fixed random query tensor served in slices."""

from __future__ import annotations

import torch

from kvpress_lab.layer_view import LayerView


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
    """A view whose ``query_fn(a, b)`` returns ``queries[:, :, a:b]`` of a fixed ``(B, Hq, T, D)`` tensor.

    ``pad[b]`` left-padding tokens in row ``b`` (default none); padded keys/queries are random too,
    so any scorer that looks at them shows up in the results.
    """
    gen = torch.Generator().manual_seed(seed)
    heads = kv_heads * groups
    keys = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(device, dtype)  # (B, Hkv, T, D)
    values = torch.randn(batch, kv_heads, length, head_dim, generator=gen).to(device, dtype)
    queries = torch.randn(batch, heads, length, head_dim, generator=gen).to(device, dtype)  # (B, Hq, T, D)
    output_projection = torch.randn(5, heads * head_dim, generator=gen).to(device, dtype)  # (hidden=5, Hq * D): W_o
    pad = pad if pad is not None else [0] * batch
    valid = (torch.arange(length)[None, :] >= torch.tensor(pad)[:, None]).to(device)  # (B, T)
    return LayerView(
        layer_idx=layer_idx,
        keys=keys,
        values=values,
        valid=valid,
        window=min(window, length),
        scaling=head_dim**-0.5,
        num_query_heads=heads,
        query_fn=lambda start, stop: queries[:, :, start:stop],
        output_projection=output_projection,
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
