"""Decoding on a compressed cache: each layer decides how the coming attention call reads it.

transformers builds one causal mask per forward pass, sized from the first full-attention layer.
After eviction, layers hold different numbers of entries (pyramid budgets), rows of a padded
batch hold filler slots, and per-head layers hold a different count per head, so one mask cannot
fit every layer. Before each full-attention module's forward on a compressed cache, these hooks
hand the layer a :class:`~kvpress_lab.cache_layers.DecodingStep` and apply the
:class:`~kvpress_lab.cache_layers.LayerAttention` it returns (its mask, and possibly an attention
function of its own, such as the varlen kernel of ragged layers). Layers follow the
:class:`~kvpress_lab.cache_layers.CompressedCacheLayer` protocol; an uncompressed layer of a
compressed cache gets transformers' causal mask sized for itself. The hooks do nothing unless the
cache passed to the model holds at least one compressed layer.

Every layer of one forward shares one :class:`~kvpress_lab.cache_layers.protocol.StepMemo`: a mask is built
once per step and distinct layer length (and filler pattern), not once per layer, and not at all
where the kernel needs none (one new token under sdpa/eager on layers without filler slots). The
tokens a compressed cache consumes are recorded on their own device (no per-step copy to the
host); they are compared with ``generate``'s ``input_ids`` only when ``generate`` starts.
"""

from __future__ import annotations

import inspect
import threading

import torch
from torch import nn

from kvpress_lab.cache_layers import DecodingStep, LayerAttention, causal_layer_attention, is_compressed_layer
from kvpress_lab.cache_layers.protocol import StepMemo, VarlenKernel
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.generate_guard import GenerateCall
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.errors import CacheReuseError, UnsupportedCacheError

__all__ = [
    "DecodingHooks",
    "PaddingCapture",
    "cache_from_kwargs",
    "mark_compressed",
    "is_compressed",
    "check_cache_matches",
    "mark_decoding_compression",
    "check_decoding_compression",
]

COMPRESSED_FLAG = "_kvpress_lab_compressed"
_TOKENS_ATTR = "_kvpress_lab_tokens"  # list of (B, q) int64 tensors (on their devices): every token consumed, or None
_DECODE_RECIPE_ATTR = "_kvpress_lab_decode_recipe"  # the Recipe whose decode_budget this cache expects


def cache_from_kwargs(kwargs: dict) -> object | None:
    """The cache passed to a module call (``cache`` since transformers 5.x, ``past_key_values`` before)."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def mark_compressed(cache: object, tokens: torch.Tensor | None = None) -> None:
    """Flag ``cache`` as holding compressed layers, so decoding asks each layer for its attention.

    ``tokens`` are the ``(B, T)`` ids of the prefill that filled it (``None`` when it ran on
    embeddings): the decoding hooks then record every token the cache consumes, so reusing the
    cache for another prompt is refused (:class:`~kvpress_lab.CacheReuseError`).
    """
    if not is_compressed(cache):
        setattr(cache, _TOKENS_ATTR, None if tokens is None else [tokens.detach().to("cpu", torch.int64)])
    setattr(cache, COMPRESSED_FLAG, True)


def is_compressed(cache: object) -> bool:
    """Whether ``cache`` was flagged by :func:`mark_compressed`."""
    return bool(getattr(cache, COMPRESSED_FLAG, False))


class PaddingCapture:
    """Reads the 2-D padding mask out of the decoder's call (keyword or positional).

    >>> capture = PaddingCapture(nn.Identity())                      # doctest: +SKIP
    >>> capture(args, kwargs)  # (B, S) bool, or None for no mask or a custom 4-D mask  # doctest: +SKIP
    """

    def __init__(self, decoder: nn.Module):
        try:
            names = list(inspect.signature(decoder.forward).parameters)
        except (TypeError, ValueError):
            names = []
        self._position = names.index("attention_mask") if "attention_mask" in names else None

    def __call__(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        mask = kwargs.get("attention_mask")
        if mask is None and self._position is not None and len(args) > self._position:
            mask = args[self._position]
        if mask is None or mask.dim() != 2:
            return None  # a custom 4-D mask is the caller's business; we cannot re-slice it per layer
        return mask.to(torch.bool)


class DecodingHooks:
    """What each compressed layer needs before a decoding step: its mask, or its own attention call.

    Pure logic: :class:`~kvpress_lab.engine.model_hooks.ModelHooks` registers the hooks and calls
    these methods (every thread's forwards, each with its own per-forward state).

    Parameters
    ----------
    adapter : ModelAdapter
        The model's attention modules and config.
    ragged_kernel : VarlenKernel or None
        Variable-length kernel for layers that can use one (ragged layers), whatever the attention
        implementation (for instance
        :func:`~kvpress_lab.cache_layers.varlen_attention.reference_varlen_attention`); handed to
        the layers as :attr:`DecodingStep.varlen_kernel <kvpress_lab.cache_layers.DecodingStep>`.
    """

    def __init__(self, adapter: ModelAdapter, ragged_kernel: VarlenKernel | None = None, model: nn.Module | None = None):
        self.adapter = adapter
        self.ragged_kernel = ragged_kernel
        self.model = model
        self._steps: dict[int, tuple[torch.Tensor | None, StepMemo]] = {}  # thread ident -> (padding mask, memo) of its forward
        self._capture = PaddingCapture(adapter.decoder)
        self._routed: list[tuple[object, str | None]] = []  # (config, implementation) to restore

    def __getstate__(self) -> dict:
        """Copies carry no forward in flight."""
        return {**self.__dict__, "_steps": {}, "_routed": []}

    @property
    def padding_mask(self) -> torch.Tensor | None:
        """``(B, past + q)`` bool mask of the current forward in this thread, or ``None``."""
        step = self._steps.get(threading.get_ident())
        return None if step is None else step[0]

    # -- what the hooks call -----------------------------------------------------------------

    def capture_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the decoder's forward: keep this thread's padding mask; record the tokens a compressed cache consumes."""
        self._steps[threading.get_ident()] = (self._capture(args, kwargs), StepMemo())  # the memo: shared by this forward's layers
        cache = cache_from_kwargs(kwargs)
        if cache is not None and is_compressed(cache):
            tokens = getattr(cache, _TOKENS_ATTR, None)
            ids = kwargs.get("input_ids", args[0] if args else None)
            if tokens is not None and ids is not None:
                tokens.append(ids.detach().to(torch.int64, copy=True))  # stays on its device: no sync per step
            elif tokens is not None:  # fed embeddings: what the cache holds is no longer known
                setattr(cache, _TOKENS_ATTR, None)

    def end_forward(self) -> None:
        """After the decoder's forward: forget this thread's per-forward state."""
        self._steps.pop(threading.get_ident(), None)

    def check_generate(self, call: GenerateCall) -> None:
        """Refuse ``generate`` on a compressed cache that does not belong to its inputs."""
        cache = call.cache
        if cache is None or not is_compressed(cache):
            return
        check_cache_matches(cache, call.input_ids, self.adapter.num_kv_heads)
        expand = max(call.option("num_beams") or 1, call.option("num_return_sequences") or 1)
        if expand > 1:
            raise CacheReuseError(
                f"generate(num_beams={call.option('num_beams')}, num_return_sequences={call.option('num_return_sequences')}) "
                f"repeats every prompt {expand} times, but a compressed cache holds one row per prompt and cannot be "
                "repeated; generate one sequence per prompt (num_beams=1, num_return_sequences=1), or repeat the prompt "
                "in input_ids before the prefill."
            )

    def prepare_layer(self, idx: int, module: nn.Module, args: tuple, kwargs: dict):
        """Before full-attention layer ``idx``: hand a compressed layer its decoding step, apply its mask (or kernel)."""
        cache = cache_from_kwargs(kwargs)
        if cache is None or not is_compressed(cache) or idx >= len(cache.layers):
            return None
        padding, memo = self._steps.get(threading.get_ident(), (None, None))
        step = DecodingStep(
            config=self.adapter.config, cache=cache, layer_idx=idx, hidden_states=self.adapter.hidden_states(args, kwargs),
            padding_mask=padding, num_query_heads=self.adapter.num_query_heads, varlen_kernel=self.ragged_kernel,
            memo=StepMemo() if memo is None else memo,
        )
        layer = cache.layers[idx]
        attention: LayerAttention = layer.prepare_decoding(step) if is_compressed_layer(layer) else causal_layer_attention(step)
        if attention.attn_implementation is not None:
            self._route(module, attention.attn_implementation)
        kwargs["attention_mask"] = attention.attention_mask
        kwargs.update(attention.extra_kwargs)
        return args, kwargs

    def _route(self, module: nn.Module, implementation: str) -> None:
        """Make ``module``'s next attention call use ``implementation`` (undone after its forward)."""
        config = module.config
        self._routed.append((config, config._attn_implementation))
        config._attn_implementation = implementation

    def restore_implementation(self, module: nn.Module, args: tuple, output: object) -> None:
        """After a full-attention layer's forward (also on error): undo the routing of :meth:`prepare_layer`."""
        while self._routed:
            config, implementation = self._routed.pop()
            config._attn_implementation = implementation


def mark_decoding_compression(cache: object, recipe: EngineRecipe | None) -> None:
    """Record on ``cache`` that ``recipe`` compresses it while decoding (``decode_budget``), so decoding it
    outside that recipe's session is refused (:func:`check_decoding_compression`)."""
    if recipe is not None and recipe.decode_budget is not None:
        setattr(cache, _DECODE_RECIPE_ATTR, recipe)


def check_decoding_compression(cache: object, compressing: bool) -> None:
    """Refuse to extend a cache whose recipe compresses decoding, unless the forward's thread does (``compressing``).

    Raises
    ------
    UnsupportedCacheError
        Naming the recipe's ``decode_budget`` and where decoding-time compression runs.
    """
    recipe = None if cache is None else getattr(cache, _DECODE_RECIPE_ATTR, None)
    if recipe is None or compressing:
        return
    raise UnsupportedCacheError(
        f"This cache was prefilled by a recipe with decode_budget={recipe.decode_budget} (compress_every="
        f"{recipe.compress_every}), but this call runs outside `with recipe.apply(model)`, where decoding is never "
        "compressed: the cache would grow past its decode budget without a word. Generate inside the block "
        "(`with recipe.apply(model): model.generate(..., cache=cache)`, as kvpress_lab.ask does), or prefill with a "
        "recipe without decode_budget."
    )


def check_cache_matches(cache: object, input_ids: torch.Tensor | None, num_kv_heads: int) -> None:
    """Check that a compressed ``cache`` can continue ``input_ids`` ``(B, S)`` on a model with ``num_kv_heads``.

    The cache must have been filled by exactly the first tokens of ``input_ids`` (it was not
    extended by an earlier ``generate`` and belongs to this prompt), for the same batch size, on a
    model with the same number of KV heads.

    Raises
    ------
    CacheReuseError
        Naming what does not match and what to do (``copy.deepcopy`` the cache before each use).
    """
    for idx, layer in enumerate(cache.layers):
        if not is_compressed_layer(layer):
            continue
        shape = tuple(layer.kept_counts().shape)
        if input_ids is not None and shape[0] != input_ids.shape[0]:
            raise CacheReuseError(
                f"This compressed cache holds {shape[0]} rows but input_ids has batch size {input_ids.shape[0]}; "
                "a cache continues the batch it was prefilled with."
            )
        if shape[1] != num_kv_heads:
            raise CacheReuseError(
                f"Layer {idx} of this compressed cache has {shape[1]} KV heads but the model has {num_kv_heads}; "
                "the cache belongs to another model."
            )
        break
    tokens = getattr(cache, _TOKENS_ATTR, None)
    if tokens is None or input_ids is None:
        return  # prefilled from embeddings: the tokens it holds are unknown
    held = torch.cat([t.to("cpu") for t in tokens], dim=1)  # (B, L): the one copy to the host, when generate starts
    given = input_ids.detach().to("cpu", torch.int64)
    if given.shape[1] <= held.shape[1] or not torch.equal(given[:, : held.shape[1]], held):
        extended = held.shape[1] > tokens[0].shape[1]
        why = (f"it was already extended past its prefill ({tokens[0].shape[1]} tokens, now {held.shape[1]}) by an "
               "earlier generate" if extended else f"its {held.shape[1]} prefill tokens are not the start of input_ids")
        raise CacheReuseError(
            f"This compressed cache cannot continue input_ids of shape {tuple(given.shape)}: {why}. Decoding appends to "
            "a cache in place: pass copy.deepcopy(cache) for each question, and input_ids = the prefill tokens "
            "followed by the new ones."
        )
