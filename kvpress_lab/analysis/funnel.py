"""The attention funnel: how widely each layer's observation window attends over the prompt.

Based on https://arxiv.org/abs/2406.02069 (PyramidKV), whose Figure 1 motivates pyramid budgets:
lower layers spread attention over the whole prompt, upper layers concentrate it on a few tokens.
Two per-layer statistics measure it, both over the attention of the last ``W`` prompt queries
(float32 softmax, causal, padding never attended), averaged over those queries and all query heads:

* **entropy** (nats) of each query's distribution over keys; uniform over ``n`` keys gives
  ``log n``, a one-hot row gives 0;
* **coverage**: the smallest number of keys whose probabilities sum to ``>= mass`` (0.9 by
  default); uniform over ``n`` keys gives ``ceil(0.9 n)``, a one-hot row gives 1.

Shapes follow the legend of :mod:`kvpress_lab.layer_view`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from kvpress_lab.analysis.report import FunnelReport
from kvpress_lab.attention import window_attention
from kvpress_lab.engine.decoding import cache_from_kwargs
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.prefill import padded_positions
from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_float, check_int

__all__ = ["attention_entropy", "attention_coverage", "layer_entropy", "mass_coverage", "attention_funnel"]

_TOLERANCE = 1e-6  # cumulative float32 sums that miss `mass` by less than this still count as reaching it


def _mean_over_queries(values: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """``(B, Hq, Q)`` per-query values -> ``(B,)`` mean over heads and the row's real queries."""
    weights = query_valid[:, None, :].to(values.dtype)  # (B, 1, Q)
    count = (query_valid.sum(dim=-1) * values.shape[1]).clamp(min=1)  # (B,)
    return (values * weights).sum(dim=(1, 2)) / count


def attention_entropy(probs: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of attention rows: ``(B, Hq, Q, T)``, ``(B, Q)`` bool -> ``(B,)`` float32.

    Rows of padded queries (``query_valid`` False) are left out of the mean.

    >>> attention_entropy(torch.full((1, 1, 1, 4), 0.25), torch.ones(1, 1, dtype=torch.bool))
    tensor([1.3863])
    """
    per_query = -torch.special.xlogy(probs, probs).sum(dim=-1)  # (B, Hq, Q); 0 log 0 = 0
    return _mean_over_queries(per_query, query_valid)


def attention_coverage(probs: torch.Tensor, query_valid: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Mean number of keys holding ``mass`` of each attention row: ``(B, Hq, Q, T)`` -> ``(B,)`` float32.

    >>> attention_coverage(torch.full((1, 1, 1, 10), 0.1), torch.ones(1, 1, dtype=torch.bool))
    tensor([9.])
    """
    mass = check_float("attention_coverage", "mass", mass, minimum=0.0, maximum=1.0, min_inclusive=False)
    cumulative = probs.sort(dim=-1, descending=True).values.cumsum(dim=-1)  # (B, Hq, Q, T)
    needed = (cumulative < mass - _TOLERANCE).sum(dim=-1) + 1  # (B, Hq, Q)
    return _mean_over_queries(needed.clamp(max=probs.shape[-1]).float(), query_valid)


def _window_valid(view: LayerView) -> torch.Tensor:
    """``(B, W)`` bool: which window queries are real tokens (a row shorter than ``W`` has padded ones)."""
    return view.valid[:, view.seq_len - view.window :]


def layer_entropy(view: LayerView) -> torch.Tensor:
    """Mean entropy (nats) of the observation window's attention: ``(B,)`` float32 on ``view.device``."""
    return attention_entropy(window_attention(view), _window_valid(view))


def mass_coverage(view: LayerView, mass: float = 0.9) -> torch.Tensor:
    """Mean number of keys holding ``mass`` of the window's attention: ``(B,)`` float32 on ``view.device``."""
    return attention_coverage(window_attention(view), _window_valid(view), mass)


def _layer_statistics(view: LayerView, mass: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and coverage from one window-attention pass: two ``(B,)`` float32 tensors."""
    probs = window_attention(view)  # (B, Hq, W, T)
    query_valid = _window_valid(view)
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
        hidden = kwargs.get("hidden_states", args[0] if args else None)  # (B, T, hidden_size)
        cos, sin = kwargs["position_embeddings"]
        layer = cache_from_kwargs(kwargs).layers[idx]  # keys/values (B, Hkv, T, D), rotary applied
        if layer.keys.shape[2] != hidden.shape[1]:
            raise RuntimeError("attention_funnel measures one uncompressed prefill of an empty cache; call it "
                               "outside `with recipe.apply(model)` and without past key values.")
        view = LayerView(
            layer_idx=idx, keys=layer.keys, values=layer.values, valid=valid.to(hidden.device),
            window=min(window, hidden.shape[1]), scaling=float(module.scaling),
            num_query_heads=adapter.num_query_heads,
            query_fn=lambda a, b: ModelAdapter.queries(module, hidden[:, a:b], cos[:, a:b], sin[:, a:b]),
        )
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
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("Only left padding is supported: every row's last prompt token must be real (attention_mask 1).")
    adapter = ModelAdapter.for_model(model)
    with _capture(adapter, mask.bool(), window, mass) as found:
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
