"""One prefill, many compressed caches: the prompt runs once and every recipe compresses its output.

Compression acts on a layer's cache *after* that layer's forward, and the next layer's input does
not depend on it, so a prefill's hidden states are the same whatever the recipe. This module
runs the prompt once with the full cache, keeping each full-attention layer's input (hidden
states and rotary tables), then replays exactly the hooks a :class:`CompressionSession` runs
during a prefill — the same code, on the same tensors — once per recipe. Each recipe's cache is
therefore bit-identical to compressing it alone.

A ``None`` among the recipes asks for the full cache itself (the reference a benchmark compares
with): the pass produced it anyway, so it costs no prefill of its own.

The pass's forward asks the model for the last position's logits only (``logits_to_keep=1``
where the model takes it): nobody reads the others, and on a 49k vocabulary the ``lm_head`` of
every position costs a sixth of a 2,048-token prefill on CPU.

Memory held at once: the full cache and every full-attention layer's input ``(B, T, hidden)``
during the pass (about the size of the full cache again), then one compressed cache per recipe;
``max_recipes`` bounds how many recipes share one pass (more recipes run more passes).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from kvpress_lab.engine.decoding import mark_decoding_compression
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.layer_call import ForwardInputs, LayerCall
from kvpress_lab.engine.model_hooks import HookListener, add_listener, enable_compressed_decoding, hooks_in_use, remove_listener
from kvpress_lab.engine.padding import padded_positions
from kvpress_lab.engine.post_prefill import needs_reconstruction
from kvpress_lab.engine.prefill import check_prompt, forward_cache
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.engine.session import CompressionSession
from kvpress_lab.errors import UnsupportedCacheError

if TYPE_CHECKING:
    from transformers.cache_utils import Cache

__all__ = ["compress_many"]


@torch.no_grad()
def compress_many(
    model: nn.Module,
    input_ids: torch.Tensor,
    recipes: Sequence[EngineRecipe | None],
    attention_mask: torch.Tensor | None = None,
    *,
    max_recipes: int | None = None,
) -> list[Cache]:
    """The compressed cache of every recipe from one prefill of ``input_ids``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a supported family.
    input_ids : torch.Tensor
        ``(B, T)`` prompt tokens (left-padded when ``B > 1``).
    recipes : sequence of Recipe or None
        What to compress with; a recipe may appear twice. ``None``: the full (uncompressed) cache,
        exactly ``model(input_ids, attention_mask=..., use_cache=True)``'s.
    attention_mask : torch.Tensor or None
        ``(B, T)``, 0 on left padding.
    max_recipes : int or None
        At most this many recipes per prefill pass (``None``: all in one pass).

    Returns
    -------
    list[transformers.Cache]
        One cache per recipe, in order, each equal to ``recipe.prefill(model, input_ids,
        attention_mask)`` (the full cache for ``None``; no two share a layer): pass ``copy.deepcopy`` of one to ``generate`` per question. Decoding
        hooks stay on ``model`` as after :func:`~kvpress_lab.engine.prefill.prefill`.

    Raises
    ------
    RuntimeError
        Inside a ``with recipe.apply(model)`` block of the same thread: its session would compress
        the pass, and every cache would be that recipe's.
    UnsupportedCacheError
        For a recipe whose scorer runs a reconstruction pass after the prefill (``kvzip``), which
        a shared prefill does not replay.
    """
    recipes = list(recipes)
    if not recipes or not all(r is None or isinstance(r, EngineRecipe) for r in recipes):
        raise TypeError(f"recipes must be one or more kvpress_lab.Recipe (or None for the full cache), "
                        f"got {[type(r).__name__ for r in recipes]}.")
    for recipe in recipes:
        if recipe is not None and needs_reconstruction(recipe.strategies.scorer):
            raise UnsupportedCacheError(
                f"Scorer {recipe.scorer!r} runs a reconstruction pass after the prefill, which a shared prefill "
                "(compress_many) does not replay; compress with this recipe alone (Recipe.prefill)."
            )
    if max_recipes is not None and (isinstance(max_recipes, bool) or not isinstance(max_recipes, int) or max_recipes < 1):
        raise ValueError(f"max_recipes must be an integer >= 1 or None, got {max_recipes!r}.")
    check_prompt(model, input_ids, attention_mask)
    step = max_recipes or len(recipes)
    with hooks_in_use(model, "compress_many"):
        caches: list[Cache] = []
        for start in range(0, len(recipes), step):
            caches += _one_pass(model, input_ids, attention_mask, recipes[start : start + step])
        enable_compressed_decoding(model)
    for recipe, cache in zip(recipes, caches):
        mark_decoding_compression(cache, recipe)
    return caches


class _LayerInputs(HookListener):
    """Keeps what each full-attention layer receives during one pass (this thread's calls only)."""

    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        self.inputs: dict[int, tuple] = {}  # layer -> (hidden states (B, T, H), (cos, sin))

    def attention_pre(self, idx: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.inputs[idx] = (self.adapter.hidden_states(args, kwargs), kwargs["position_embeddings"])


def _one_pass(model, input_ids, attention_mask, recipes) -> list[Cache]:
    adapter = ModelAdapter.for_model(model)
    sessions = [None if recipe is None else CompressionSession(recipe, model) for recipe in recipes]  # validates first
    capture = _LayerInputs(adapter)
    add_listener(model, capture, "compress_many")
    position_ids = None if attention_mask is None else padded_positions(attention_mask)
    try:
        full = forward_cache(model, input_ids, attention_mask=attention_mask, position_ids=position_ids)
    finally:
        remove_listener(model, capture)
    caches = [None if session is None else _replay(session, full, capture.inputs, input_ids, attention_mask, position_ids)
              for session in sessions]
    wanted = [i for i, session in enumerate(sessions) if session is None]  # the full cache: no replay reads it now
    for n, i in enumerate(wanted):
        caches[i] = full if n == len(wanted) - 1 else copy.deepcopy(full)
    return caches


def _replay(session: CompressionSession, full: Cache, inputs: dict, input_ids, attention_mask, position_ids) -> Cache:
    """Compress the captured pass with ``session`` (:meth:`CompressionSession.replay_prefill`), into a cache of its own."""
    cache = copy.copy(full)
    cache.layers = list(full.layers)  # replaced layers are this recipe's; the full ones are only read
    forward = ForwardInputs.of_prompt(cache, input_ids, attention_mask, position_ids)
    session.replay_prefill(forward, [LayerCall(idx, *inputs[idx], forward) for idx in session.adapter.compressible])
    for idx, layer in enumerate(cache.layers):
        if layer is full.layers[idx]:  # kept whole (sliding, or nothing to evict): decoding must not share it
            cache.layers[idx] = copy.deepcopy(layer)
    return cache
