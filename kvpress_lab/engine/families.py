"""Per-family knowledge: where the attention modules are and how to recompute their queries.

Queries are recomputed from the attention module's own input (its q projection, the q-norm
where the family has one, and its rotary embedding), so the engine works with whatever
attention kernel the model uses (eager, sdpa, flash-attention).
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import get_layer_types_and_kwargs

from kvpress_lab.errors import UnsupportedModelError
from kvpress_lab.layer_view import LayerView

__all__ = ["SUPPORTED_MODEL_TYPES", "ModelAdapter", "ModuleInputs", "prerope_queries", "prerope_keys"]

#: ``config.model_type`` values the engine supports (decoder text config).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3")


@dataclass
class ModelAdapter:
    """What the engine needs to know about one loaded model.

    Parameters
    ----------
    decoder : nn.Module
        The base model (``model.get_decoder()``) whose forward receives the 2-D attention mask.
    config : transformers.PretrainedConfig
        The decoder's text config.
    attention : dict[int, nn.Module]
        Attention module of every layer, by layer index.
    compressible : list[int]
        Indices of full-attention layers, in order (sliding-window layers are left alone: their
        cache is already bounded). Their ordinal in this list is the allocator's layer index.
    """

    decoder: nn.Module
    config: object
    attention: dict[int, nn.Module]
    compressible: list[int]

    @classmethod
    def for_model(cls, model: nn.Module) -> ModelAdapter:
        """Inspect ``model``; raise :class:`UnsupportedModelError` for an unsupported family."""
        config = getattr(model, "config", None)
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        model_type = getattr(text_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"kvpress_lab cannot compress a {type(model).__name__} (model_type={model_type!r}). "
                f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}."
            )
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        layers = getattr(decoder, "layers", None)
        if layers is None:
            raise UnsupportedModelError(f"{type(decoder).__name__} has no `layers`; expected a transformers decoder.")
        attention = {idx: layer.self_attn for idx, layer in enumerate(layers)}
        layer_types, _ = get_layer_types_and_kwargs(text_config)
        compressible = [idx for idx, kind in enumerate(layer_types) if kind == "full_attention"]
        return cls(decoder=decoder, config=text_config, attention=attention, compressible=compressible)

    @property
    def num_query_heads(self) -> int:
        """``Hq``."""
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        """``Hkv``."""
        return int(getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads)

    @staticmethod
    def hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
        """The ``(B, S, hidden_size)`` input of an attention module's call, from a hook's arguments."""
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden is None:
            raise RuntimeError("The attention module was called without hidden states; kvpress_lab cannot read its input.")
        return hidden

    def layer_view(
        self,
        idx: int,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        keys: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor,
        window: int,
        queries_from: int = 0,
        queries: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> LayerView:
        """The :class:`~kvpress_lab.LayerView` of layer ``idx``: the one place views are built.

        Parameters
        ----------
        idx : int
            Layer index in the model.
        hidden : torch.Tensor
            ``(B, S, hidden_size)``, the attention module's input for cached entries ``queries_from:T``.
        position_embeddings : tuple of torch.Tensor
            ``(cos, sin)``, each ``(B or 1, S, D)``: the rotary tables the module received.
        keys, values : torch.Tensor
            ``(B, Hkv, T, D)``, the layer's cache (rotary applied to keys).
        valid : torch.Tensor
            ``(B, T)`` bool, ``False`` on left padding (and on filler slots).
        window : int
            ``W`` requested; clamped to the tokens whose queries exist.
        queries_from : int
            First cached entry whose query can be recomputed: ``hidden`` holds the inputs of entries
            ``queries_from:T`` (a chunk of a chunked prefill; earlier entries were kept from earlier
            chunks). Asking for earlier queries raises a ``ValueError`` naming the limit.
        queries : torch.Tensor or None
            ``(B, Hq, T - queries_from, D)``: the queries the module itself computed for ``hidden``
            (:mod:`kvpress_lab.engine.query_capture`); the view slices them instead of
            projecting ``hidden`` again. ``None`` (or another length): recomputed on demand.
        positions : torch.Tensor or None
            ``(B, T)`` int64 positions of the cached entries, when every entry's is known (a
            one-shot prefill); ``None`` otherwise.
        """
        module = self.attention[idx]
        cos, sin = position_embeddings
        if queries is not None and queries.shape[-2] == hidden.shape[1]:
            query_fn = functools.partial(_slice_kept_queries, queries, queries_from)
        else:
            query_fn = functools.partial(_slice_queries, module, hidden, cos, sin, queries_from)
        return LayerView(
            layer_idx=idx,
            keys=keys,
            values=values,
            valid=valid.to(keys.device),
            window=min(window, hidden.shape[1]),
            scaling=float(module.scaling),
            num_query_heads=self.num_query_heads,
            query_fn=query_fn,
            output_projection=self.output_projection(idx),
            inputs=ModuleInputs(module, self.rotary_module, self.layer_type(idx), hidden, queries_from),
            positions=None if positions is None else positions.to(keys.device, torch.int64),
        )

    @property
    def rotary_module(self) -> nn.Module:
        """The decoder's rotary embedding module (``decoder.rotary_emb``)."""
        rotary = getattr(self.decoder, "rotary_emb", None)
        if rotary is None:
            raise UnsupportedModelError(f"{type(self.decoder).__name__} has no rotary_emb; kvpress_lab expects a RoPE decoder.")
        return rotary

    @functools.cached_property
    def _rotary_per_layer_type(self) -> bool:
        return "layer_type" in inspect.signature(self.rotary_module.forward).parameters

    def layer_type(self, idx: int) -> str | None:
        """The layer's type for rotary modules that keep one table per type (Gemma 3), else ``None``."""
        if not self._rotary_per_layer_type:
            return None
        types = getattr(self.config, "layer_types", None)
        return "full_attention" if types is None else types[idx]

    def output_projection(self, idx: int) -> torch.Tensor | None:
        """``(hidden_size, Hq * D)`` weight of layer ``idx``'s output projection ``o_proj`` (``None`` if absent)."""
        projection = getattr(self.attention[idx], "o_proj", None)
        weight = getattr(projection, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_meta:
            # offloaded by a device_map: accelerate keeps the weight in its hook's map and loads it
            # only inside o_proj's own forward
            weights_map = getattr(getattr(projection, "_hf_hook", None), "weights_map", None)
            if weights_map is None or "weight" not in weights_map:
                raise ValueError(
                    f"Layer {idx}'s o_proj weight is on the meta device and no offload map holds it; "
                    "load the model with its weights materialised."
                )
            weight = weights_map["weight"]
        return weight.detach() if isinstance(weight, torch.Tensor) else None

    def layer_view_from_call(self, idx: int, args: tuple, kwargs: dict, layer: object, valid: torch.Tensor, window: int,
                             queries: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> LayerView:
        """:meth:`layer_view` from an attention module's forward-hook arguments and its cache ``layer``."""
        hidden = self.hidden_states(args, kwargs)
        return self.layer_view(idx, hidden, kwargs["position_embeddings"], layer.keys, layer.values, valid, window,
                               queries=queries, positions=positions)

    @staticmethod
    def queries(module: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotated queries of ``hidden`` exactly as ``module`` computes them.

        Parameters
        ----------
        module : nn.Module
            The attention module (LlamaAttention, Qwen3Attention, Phi3Attention, ...).
        hidden : torch.Tensor
            ``(B, S, hidden_size)``, the module's input for ``S`` tokens.
        cos, sin : torch.Tensor
            ``(B or 1, S, D)`` rotary tables for the same tokens.

        Returns
        -------
        torch.Tensor
            ``(B, Hq, S, D)``.
        """
        q = prerope_queries(module, hidden)
        rotate = sys.modules[type(module).__module__].apply_rotary_pos_emb
        q, _ = rotate(q, q[:, :1], cos, sin)
        return q


def prerope_queries(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Queries of ``hidden`` ``(B, S, hidden_size)`` before the rotary embedding: ``(B, Hq, S, D)``.

    The module's own projection (``q_proj``, or the query part of Phi-3's fused ``qkv_proj``), then
    its q-norm where the family has one (Qwen3, Gemma3).
    """
    return _prerope(module, hidden, "q", 0, module.config.num_attention_heads)


def prerope_keys(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Keys of ``hidden`` ``(B, S, hidden_size)`` before the rotary embedding: ``(B, Hkv, S, D)``.

    The module's own projection (``k_proj``, or the key part of Phi-3's fused ``qkv_proj``), then
    its k-norm where the family has one (Qwen3, Gemma3); rotating them with the layer's tables
    gives the cached keys.
    """
    return _prerope(module, hidden, "k", module.config.num_attention_heads, module.config.num_key_value_heads)


def _prerope(module: nn.Module, hidden: torch.Tensor, part: str, first_head: int, heads: int) -> torch.Tensor:
    """``(B, heads, S, D)``: ``module``'s ``{part}_proj`` of ``hidden`` (or heads ``first_head:first_head + heads`` of
    Phi-3's fused ``qkv_proj``, laid out ``[queries | keys | values]``), then its ``{part}_norm`` where the family has
    one (Qwen3, Gemma3: RMSNorm over D)."""
    head_dim = module.head_dim
    if hasattr(module, "qkv_proj"):  # Phi3: fused projection
        projected = module.qkv_proj(hidden)[..., first_head * head_dim : (first_head + heads) * head_dim]
    else:
        projected = getattr(module, f"{part}_proj")(hidden)
    x = projected.view(*hidden.shape[:-1], -1, head_dim).transpose(1, 2)  # (B, heads, S, D)
    norm = getattr(module, f"{part}_norm", None)
    return x if norm is None else norm(x)


@dataclass(frozen=True, eq=False)
class ModuleInputs:
    """:class:`~kvpress_lab.layer_view.LayerInputs` of one attention module: its input and projections.

    Parameters
    ----------
    module : nn.Module
        The attention module.
    rotary_module : nn.Module
        The decoder's rotary embedding (``forward(x, position_ids[, layer_type])``).
    layer_type : str or None
        Passed to rotary modules that keep one table per layer type (Gemma 3).
    hidden : torch.Tensor
        ``(B, S, hidden_size)``, the module's input for cached entries ``offset:T``.
    offset : int
        First cached entry ``hidden`` covers.
    """

    module: nn.Module
    rotary_module: nn.Module
    layer_type: str | None
    hidden: torch.Tensor
    offset: int

    def prerope_queries(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, n, hidden_size) -> (B, Hq, n, D)``."""
        return prerope_queries(self.module, hidden)

    def prerope_keys(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, n, hidden_size) -> (B, Hkv, n, D)``."""
        return prerope_keys(self.module, hidden)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B or 1, n)`` int64 -> ``(cos, sin)``, each ``(B or 1, n, R)`` in the module input's dtype."""
        if self.layer_type is None:
            return self.rotary_module(self.hidden, positions)
        return self.rotary_module(self.hidden, positions, self.layer_type)


def _check_query_range(offset: int, start: int, stop: int) -> None:
    if start < offset:
        raise ValueError(
            f"the queries of cached entries before {offset} are gone (they were kept from earlier chunks of a chunked "
            f"prefill); asked for {start}:{stop}. A scorer that needs them cannot score chunked prefills."
        )


def _slice_kept_queries(queries: torch.Tensor, offset: int, start: int, stop: int) -> torch.Tensor:
    _check_query_range(offset, start, stop)
    return queries[:, :, start - offset : stop - offset]


def _slice_queries(
    module: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, offset: int, start: int, stop: int
) -> torch.Tensor:
    _check_query_range(offset, start, stop)
    a, b = start - offset, stop - offset
    return ModelAdapter.queries(module, hidden[:, a:b], cos[:, a:b], sin[:, a:b])
