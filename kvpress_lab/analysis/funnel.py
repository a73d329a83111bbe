"""The attention funnel: how widely each layer's observation window attends over the prompt.

Based on https://arxiv.org/abs/2406.02069 (PyramidKV), whose Figure 1 motivates pyramid budgets:
lower layers spread attention over the whole prompt, upper layers concentrate it on a few tokens.
Two per-layer statistics measure it, both over the attention of the last ``W`` prompt queries
(float32 softmax, causal, padding never attended), averaged over those queries and all query heads:

* **entropy** (nats) of each query's distribution over keys; uniform over ``n`` keys gives
  ``log n``, a one-hot row gives 0;
* **coverage**: the smallest number of keys whose probabilities sum to ``>= mass`` (0.9 by
  default); uniform over ``n`` keys gives ``ceil(0.9 n)``, a one-hot row gives 1.

Shapes follow the legend of :mod:`kvpress_lab.layer_view`. The statistics themselves
(:func:`~kvpress_lab.attention.attention_entropy`, :func:`~kvpress_lab.attention.attention_coverage`)
live in :mod:`kvpress_lab.attention`, where allocators use them too; they are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from kvpress_lab.analysis.report import FunnelReport
from kvpress_lab.attention import attention_coverage, attention_entropy, window_attention, window_query_valid
from kvpress_lab.engine.decoding import cache_from_kwargs
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.padding import check_left_padding, padded_positions
from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_float, check_int

__all__ = ["attention_entropy", "attention_coverage", "layer_entropy", "mass_coverage", "attention_funnel"]


def layer_entropy(view: LayerView) -> torch.Tensor:
    """Mean entropy (nats) of the observation window's attention: ``(B,)`` float32 on ``view.device``."""
    return attention_entropy(window_attention(view), window_query_valid(view))


def mass_coverage(view: LayerView, mass: float = 0.9) -> torch.Tensor:
    """Mean number of keys holding ``mass`` of the window's attention: ``(B,)`` float32 on ``view.device``."""
    return attention_coverage(window_attention(view), window_query_valid(view), mass)


def _layer_statistics(view: LayerView, mass: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and coverage from one window-attention pass: two ``(B,)`` float32 tensors."""
    probs = window_attention(view)  # (B, Hq, W, T)
    query_valid = window_query_valid(view)
    return attention_entropy(probs, query_valid), attention_coverage(probs, query_valid, mass)


@contextlib.contextmanager
def _capture(
    adapter: ModelAdapter, valid: torch.Tensor, window: int, mass: float
) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Forward hooks on every full-attention layer, removed in ``finally``; yields ``{layer: (entropy, coverage)}``.

    ``valid`` is the ``(B, T)`` bool padding mask of the forward pass the hooks will see.
    """
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(idx: int, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        layer = cache_from_kwargs(kwargs).layers[idx]  # keys/values (B, Hkv, T, D), rotary applied
        if layer.keys.shape[2] != adapter.hidden_states(args, kwargs).shape[1]:
            raise RuntimeError("attention_funnel measures one uncompressed prefill of an empty cache; call it "
                               "outside `with recipe.apply(model)` and without past key values.")
        view = adapter.layer_view_from_call(idx, args, kwargs, layer, valid, window)
        entropy, coverage = _layer_statistics(view, mass)
        found[idx] = (entropy.cpu(), coverage.cpu())

    handles = [adapter.attention[idx].register_forward_hook(functools.partial(hook, idx), with_kwargs=True)
               for idx in adapter.compressible]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def attention_funnel(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
    window: int = 32, mass: float = 0.9,
) -> FunnelReport:
    """Per-layer entropy and coverage of the window's attention, from one prefill forward pass.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a supported family (any attention implementation).
    input_ids : torch.Tensor
        ``(B, T)`` prompt tokens, left-padded when ``B > 1``.
    attention_mask : torch.Tensor or None
        ``(B, T)``, 0 on left padding.
    window : int
        ``W``, the number of last prompt queries whose attention is measured. Default 32.
    mass : float
        Attention mass of the coverage statistic, in ``(0, 1]``. Default 0.9.

    Returns
    -------
    FunnelReport
        One entry per full-attention layer, each the mean over the batch rows.
    """
    check_int("attention_funnel", "window", window, minimum=1)
    check_float("attention_funnel", "mass", mass, minimum=0.0, maximum=1.0, min_inclusive=False)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt_length), got shape {tuple(input_ids.shape)}.")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must match input_ids {tuple(input_ids.shape)}, got {tuple(mask.shape)}.")
    adapter = ModelAdapter.for_model(model)
    with _capture(adapter, check_left_padding(mask), window, mass) as found:
        adapter.decoder(input_ids=input_ids, attention_mask=mask.long(), position_ids=padded_positions(mask), use_cache=True)
    layers = [idx for idx in adapter.compressible if idx in found]
    if len(layers) != len(adapter.compressible):
        raise RuntimeError(f"Hooks saw {len(layers)} of {len(adapter.compressible)} full-attention layers; "
                           "the model did not run its attention modules with a cache.")
    lengths = [int(n) for n in mask.sum(dim=-1).tolist()]
    return FunnelReport(
        model=str(getattr(adapter.config, "_name_or_path", "") or type(model).__name__),
        layers=layers, window=window, mass=mass, prompt_lengths=lengths,
        entropy=[float(found[i][0].mean()) for i in layers],
        coverage=[float(found[i][1].mean()) for i in layers],
        coverage_fraction=[float((found[i][1] / torch.tensor(lengths, dtype=torch.float32)).mean()) for i in layers],
    )
