"""Scorers that need a forward pass after the prefill (KVzip's context reconstruction).

A scorer declaring ``needs = "reconstruction"`` is not called per layer during the prefill.
The session keeps every layer uncompressed until the prefill's forward ends (as for a
``"global"`` allocator), then :func:`reconstruction_scores` runs the scorer's repeat forwards,
one row and one chunk at a time, on a *copy* of the uncompressed cache that shares its tensors
(a cache layer's ``update`` concatenates into new tensors, so the prefill cache is never
written): forward hooks on the full-attention modules recompute the repeat tokens' queries
and hand them, with the cached keys, to the scorer's ``reconstruction_scores``. The copy and
the repeat tokens are dropped; the session then allocates and evicts from those scores.

What cannot work is refused: a chunked prefill (the scorer does not declare ``chunked_prefill``),
decoding-time compression (:class:`~kvpress_lab.Recipe` refuses ``decode_budget``), a prefill
from ``inputs_embeds`` (there are no token ids to repeat), and
:func:`~kvpress_lab.engine.shared_prefill.compress_many`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from typing import Any

import torch
from torch import nn

from kvpress_lab.capabilities import SCORER
from kvpress_lab.engine.decoding import cache_from_kwargs
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.model_hooks import HookListener, thread_listener
from kvpress_lab.engine.query_capture import capture_queries, override_attention
from kvpress_lab.errors import UnsupportedCacheError

__all__ = ["needs_reconstruction", "reconstruction_prompt", "reconstruction_scores"]


def needs_reconstruction(scorer: object) -> bool:
    """Whether ``scorer`` is scored by a pass after the prefill (``needs == "reconstruction"``)."""
    return SCORER.of(scorer, "needs") == "reconstruction"


def reconstruction_prompt(scorer: Any, model: nn.Module) -> Any:
    """The scorer's repeat prompt: its own ids, or built from the model's local tokenizer.

    Raises
    ------
    ValueError
        When the scorer has no ids and no tokenizer can be loaded from ``model.config.name_or_path``,
        or its ids are not token ids of this model (beyond its vocabulary).
    """
    prompt = scorer.prompt()
    if prompt is not None:
        _check_vocabulary(scorer, prompt, model)
        return prompt
    path = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
    tokenizer = _local_tokenizer(path) if path else None
    if tokenizer is None:
        raise ValueError(
            f"Scorer {scorer.name!r} needs the token ids of its repeat prompt, and no tokenizer could be loaded from the "
            f"model's config.name_or_path={path!r}; pass scorer_kwargs={{'repeat_ids': [...], 'continue_ids': [...], "
            "'suffix_ids': [...]}} (kvpress_lab.scorers.kvzip.RepeatPrompt.from_tokenizer(tokenizer) builds them)."
        )
    return scorer.prompt_from_tokenizer(tokenizer)


def _check_vocabulary(scorer: Any, prompt: Any, model: nn.Module) -> None:
    """Refuse repeat-prompt ids the model has no embedding for (they would fail as an IndexError mid-prefill)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None)
    if size is None:
        return
    for field, ids in (("repeat_ids", prompt.repeat), ("continue_ids", prompt.continue_), ("suffix_ids", prompt.suffix)):
        beyond = [int(i) for i in ids if int(i) >= size]
        if beyond:
            raise ValueError(f"Scorer {scorer.name!r}: scorer_kwargs {field} holds token ids {beyond[:5]} beyond this model's "
                             f"vocabulary of {size}; build the ids with this model's tokenizer "
                             "(kvpress_lab.scorers.kvzip.RepeatPrompt.from_tokenizer(tokenizer)).")


@functools.lru_cache(maxsize=4)
def _local_tokenizer(path: str) -> Any:
    """The tokenizer saved at ``path`` (no download), loaded once; ``None`` when there is none."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reconstruction_scores(
    model: nn.Module,
    adapter: ModelAdapter,
    scorer: Any,
    cache: Any,
    input_ids: torch.Tensor | None,
    valid: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Run the scorer's reconstruction forwards and return every full-attention layer's scores.

    Parameters
    ----------
    model : nn.Module
        The model (for its tokenizer path).
    adapter : ModelAdapter
        The model's adapter: decoder, attention modules, compressible layers.
    scorer : object
        A scorer with ``needs == "reconstruction"``: ``prompt()``, ``prompt_from_tokenizer(tokenizer)``,
        ``chunks(context, prompt)``,
        ``reconstruction_scores(queries, context_keys, new_keys, start, stop, scaling)``.
    cache : transformers.DynamicCache
        The prefill's uncompressed cache (left untouched).
    input_ids : torch.Tensor or None
        ``(B, T)`` the prompt's ids.
    valid : torch.Tensor
        ``(B, T)`` bool, ``False`` on left padding.
    position_ids : torch.Tensor or None
        ``(B, T)`` the prefill's positions (the repeat tokens continue after each row's last one),
        or ``None``: the prefill ran at positions ``0 .. T-1``.

    Returns
    -------
    dict[int, torch.Tensor]
        Layer index -> ``(B, Hkv, T)`` float32 scores on the layer's device (0 on padding).
    """
    if input_ids is None:
        raise UnsupportedCacheError(
            f"Scorer {scorer.name!r} repeats the prompt's tokens after the prefill, but the prefill ran from inputs_embeds: "
            "pass input_ids."
        )
    prompt = reconstruction_prompt(scorer, model)
    batch, length = valid.shape
    layers = {idx: cache.layers[idx] for idx in adapter.compressible}
    out = {idx: torch.zeros(layer.keys.shape[:3], dtype=torch.float32, device=layer.keys.device) for idx, layer in layers.items()}
    ids = input_ids.detach().cpu()
    real = valid.detach().cpu().sum(dim=-1).tolist()
    captured: dict[int, torch.Tensor] = {}  # layer -> (1, Hq, Q, D) queries the attention computed (sdpa, flash)
    modules = {idx: adapter.attention[idx] for idx in adapter.compressible}
    for row in range(batch):
        n = int(real[row])
        offset = length - n  # left padding of this row
        following = length if position_ids is None else int(position_ids[row, -1]) + 1  # first repeat token's position
        for start, stop, repeat in scorer.chunks(ids[row, offset:], prompt):
            chunk = _RowChunk(row, offset, start, stop, length)
            listener = _ChunkScores(chunk, scorer, layers, out, captured)  # layers the attention did not score itself
            fused = functools.partial(_attend_and_score, chunk, scorer, out)
            with thread_listener(model, listener), _fusing(modules, fused, scorer), capture_queries(modules, captured.__setitem__):
                _repeat_forward(adapter, _row_cache(cache, row), repeat, valid[row], following)
        sinks = min(int(SCORER.of(scorer, "num_sinks")), n)
        for scores in out.values():
            scores[row, :, offset : offset + sinks] = 1.0  # the reference's sink score (they are forced anyway)
    return out


class _ChunkScores(HookListener):
    """Scores one reconstruction chunk from every full-attention layer's forward (see :func:`_score_hook`)."""

    def __init__(self, chunk: _RowChunk, scorer: Any, layers: dict, out: dict, captured: dict):
        self.chunk, self.scorer, self.layers, self.out, self.captured = chunk, scorer, layers, out, captured

    def attention_post(self, idx: int, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        _score_hook(self.chunk, idx, self.scorer, self.layers, self.out, self.captured, module, args, kwargs, output)


class _RowChunk:
    """Where one reconstruction forward's scores go: row, its padding offset, the chunk's range, the prompt's length."""

    def __init__(self, row: int, offset: int, start: int, stop: int, length: int):
        self.row, self.offset, self.start, self.stop, self.length = row, offset, start, stop, length
        self.scored: set[int] = set()  # layers whose attention already scored this chunk (fused)


def _fusing(modules: dict, fused: Any, scorer: Any) -> Any:
    """:func:`~kvpress_lab.engine.query_capture.override_attention` with ``fused`` when the scorer can fuse, else nothing."""
    if SCORER.of(scorer, "attend_and_score") is None or not SCORER.of(scorer, "fuse"):
        return contextlib.nullcontext()
    return override_attention(modules, fused)


def _attend_and_score(chunk: _RowChunk, scorer: Any, out: dict, idx: int, module: nn.Module, query: torch.Tensor,
                      key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, *args: Any,
                      scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The repeat forward's attention of layer ``idx``, computed by the scorer together with the chunk's scores.

    The mask is the one :func:`_repeat_forward` asks for (the row's padding, then causal among the
    repeat tokens), so the scorer builds it from the row's padding instead of reading the model's.
    """
    sink = min(int(SCORER.of(scorer, "num_sinks")), chunk.start)
    base = chunk.offset
    sinks, cols = slice(base, base + sink), slice(base + chunk.start, base + chunk.stop)
    padding = torch.arange(chunk.length, device=key.device) < chunk.offset  # (n,) the row's left padding
    output, scores = scorer.attend_and_score(query, key, value, padding, float(module.scaling if scaling is None else scaling),
                                             sinks, cols, chunk.length)
    out[idx][chunk.row, :, cols] = scores[0].to(out[idx].device)
    chunk.scored.add(idx)
    return output, None


def _row_cache(cache: Any, row: int) -> Any:
    """A copy of ``cache`` holding row ``row`` only, sharing its tensors (views)."""
    copied = copy.copy(cache)
    copied.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        new.keys, new.values = layer.keys[row : row + 1], layer.values[row : row + 1]
        copied.layers.append(new)
    return copied


def _repeat_forward(adapter: ModelAdapter, cache: Any, repeat: torch.Tensor, valid: torch.Tensor, first: int) -> None:
    device = valid.device
    length = repeat.shape[0]
    mask = torch.cat([valid.long(), torch.ones(length, dtype=torch.long, device=device)])[None]  # (1, T + Q)
    positions = torch.arange(first, first + length, device=device)[None]  # continue after the prefill's last position
    with torch.no_grad():
        adapter.decoder(input_ids=repeat[None].to(device), cache=cache, attention_mask=mask,
                        position_ids=positions, use_cache=True)


def _score_hook(chunk: _RowChunk, idx: int, scorer: Any, layers: dict, out: dict, captured: dict,
                module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
    if idx in chunk.scored:
        return  # the attention itself scored the chunk (_attend_and_score)
    hidden = ModelAdapter.hidden_states(args, kwargs)  # (1, Q, hidden)
    queries = captured.pop(idx, None)  # what the attention computed; eager attention hands nothing over
    if queries is None or queries.shape[-2] != hidden.shape[1]:
        cos, sin = kwargs["position_embeddings"]
        queries = ModelAdapter.queries(module, hidden, cos, sin)  # (1, Hq, Q, D)
    new_keys = cache_from_kwargs(kwargs).layers[idx].keys[:, :, -hidden.shape[1]:]  # (1, Hkv, Q, D)
    context = layers[idx].keys[chunk.row : chunk.row + 1, :, chunk.offset:]  # (1, Hkv, n, D)
    scores = scorer.reconstruction_scores(queries, context, new_keys, chunk.start, chunk.stop, float(module.scaling))
    out[idx][chunk.row, :, chunk.offset + chunk.start : chunk.offset + chunk.stop] = scores[0].to(out[idx].device)
