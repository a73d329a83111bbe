"""An independent reference for decoding after eviction: a plain DynamicCache holding the kept
entries, driven step by step with explicit true positions (no kvpress_lab code on this path)."""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicCache


def full_prefill(model, input_ids, attention_mask=None) -> DynamicCache:
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
    return out.cache


def gathered_cache(full: DynamicCache, selections: dict) -> DynamicCache:
    """Copy of ``full`` whose layers in ``selections`` keep only the selected entries (batch 1)."""
    cache = copy.deepcopy(full)
    for idx, selection in selections.items():
        layer = cache.layers[idx]
        index = selection.indices[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
        layer.keys = torch.gather(layer.keys, 2, index)
        layer.values = torch.gather(layer.values, 2, index)
    return cache


def greedy_with_positions(model, cache, first_token, start_position: int, steps: int):
    """Greedy decode ``steps`` tokens feeding explicit ``position_ids``; returns (tokens, logits list)."""
    token = first_token.reshape(1, 1)
    tokens, logits = [], []
    for i in range(steps):
        with torch.no_grad():
            out = model(input_ids=token, position_ids=torch.tensor([[start_position + i]]), cache=cache, use_cache=True)
        step_logits = out.logits[:, -1]
        logits.append(step_logits)
        token = step_logits.argmax(-1, keepdim=True)
        tokens.append(int(token))
    return tokens, logits
