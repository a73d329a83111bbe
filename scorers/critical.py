"""CriticalKV: any scorer's scores weighted by what each value adds to the layer's output, in two stages."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from kvpress_lab.frozen_mapping import FrozenMapping
from kvpress_lab.layer_view import LayerView
from kvpress_lab.registry import get_registry
from kvpress_lab.validation import check_choice, check_float

__all__ = ["CriticalScorer", "projected_value_norms"]


def projected_value_norms(values: torch.Tensor, output_projection: torch.Tensor, num_query_heads: int) -> torch.Tensor:
    """``||W_o^h v_t||_1`` per cached entry, averaged over the query heads that read each KV head.

    Parameters
    ----------
    values : torch.Tensor
        ``(B, Hkv, T, D)`` cached values.
    output_projection : torch.Tensor
        ``(hidden_size, Hq * D)``: the ``o_proj`` weight; query head ``h`` reads columns ``h*D:(h+1)*D``.
    num_query_heads : int
        ``Hq``.

    Returns
    -------
    torch.Tensor
        ``(B, Hkv, T)`` float32.
    """
    batch, kv_heads, length, dim = values.shape
    if output_projection.dim() != 2 or output_projection.shape[1] != num_query_heads * dim:
        raise ValueError(
            f"output_projection must be (hidden_size, Hq * D) = (*, {num_query_heads * dim}), got {tuple(output_projection.shape)}."
        )
    groups = num_query_heads // kv_heads
    weight = output_projection.to(values.device, torch.float32)
    norms = values.new_zeros(batch, kv_heads, length, dtype=torch.float32)
    for head in range(num_query_heads):  # one head at a time: (B, T, hidden) instead of (B, Hq, T, hidden)
        block = weight[:, head * dim:(head + 1) * dim]  # (hidden, D)
        projected = values[:, head // groups].float() @ block.T  # (B, T, hidden)
        norms[:, head // groups] += projected.abs().sum(dim=-1)
    return norms / groups


@dataclass(frozen=True)
class CriticalScorer:
    """CriticalKV: ``(s_t + epsilon) * mean_h ||W_o^h v_t||_1``, after a first stage by the base score ``s``.

    Based on https://arxiv.org/abs/2502.03805 (Identify Critical KV Cache in LLM Inference from an
    Output Perturbation Perspective), following kvpress's ``CriticalKVPress``. Wraps any registered
    scorer, named by ``base`` with its ``base_kwargs`` (JSON, so the recipe stays serialisable).

    Parameters
    ----------
    base : str
        Registered scorer giving ``s`` (default ``"snapkv_window"``, the paper's main setting).
    base_kwargs : Mapping[str, Any]
        Hyperparameters of ``base``.
    epsilon : float
        Added to ``s`` before the rescaling, ``>= 0``. Default ``1e-4`` (kvpress).
    first_stage_ratio : float
        Fraction of each head's budget chosen by ``s`` alone, in ``[0, 1]``. Default 0.5 (kvpress
        and the paper).
    split_heads_on : {"refined", "base"}
        With ``head_allocation="adaptive"``, which scores split a layer's budget across its heads:
        ``"refined"`` (default) the final ``(s + epsilon) * norms``; ``"base"`` the base scores
        ``s``, as kvpress's ``CriticalAdaKVPress`` does (with ``head_floor_rule="kvpress"`` the
        safeguard entries are then kept outright, as there).

    Notes
    -----
    Selection of one head with budget ``k``: the forced entries (window, the base's sinks) and
    then the best entries by ``s`` fill the first ``floor(first_stage_ratio * k)`` slots (stage
    one); the rest of the budget goes to the best remaining entries by the refined score
    (stage two). The stage-one size depends on the budget, which a scorer does not know, so this
    scorer exposes :meth:`staged_scores` and the engine marks the stage-one winners as forced
    once the budgets are decided (:func:`~kvpress_lab.executors.two_stage.first_stage_entries`);
    :meth:`score` alone is the refined score. ``W_o^h`` is query head ``h``'s block of the output
    projection (``view.output_projection``); the L1 norm and the mean over the ``G`` query heads of
    a KV head follow kvpress's ``vwl1norm``.

    kvpress sizes stage one as ``int((1 - ratio) * T * first_stage_ratio)`` from the compression
    ratio; here it is ``floor(first_stage_ratio * k)`` of the budget ``k`` the allocator gave the
    head: the same number whenever ``first_stage_ratio = 1/m`` (``floor(floor(x) / m) = floor(x / m)``),
    kvpress's 0.5 included. Base scores should be non-negative (attention mass, as in the paper):
    a head whose base scores go below 0 (``knorm`` ranks by ``-||k||``) is shifted to start at 0
    before the product, which would otherwise reverse their order; heads with non-negative scores
    are used as they are. A base scored by a reconstruction pass (``kvzip``) is refused.
    """

    name: ClassVar[str] = "critical"
    base: str = "snapkv_window"
    base_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epsilon: float = 1e-4
    first_stage_ratio: float = 0.5
    split_heads_on: str = "refined"
    _base: Any = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.base, str):
            raise TypeError(f"{owner}.base must be a registered scorer name (str), got {self.base!r}.")
        if self.base == self.name:
            raise ValueError(f"{owner}.base cannot be 'critical' itself; name the scorer whose scores it refines.")
        if not isinstance(self.base_kwargs, Mapping):
            raise TypeError(f"{owner}.base_kwargs must be a mapping of the base scorer's parameters, got "
                            f"{type(self.base_kwargs).__name__}.")
        object.__setattr__(self, "base_kwargs", FrozenMapping(self.base_kwargs))
        object.__setattr__(self, "epsilon", check_float(owner, "epsilon", self.epsilon, minimum=0.0))
        object.__setattr__(self, "first_stage_ratio",
                           check_float(owner, "first_stage_ratio", self.first_stage_ratio, minimum=0.0, maximum=1.0))
        check_choice(owner, "split_heads_on", self.split_heads_on, ("refined", "base"))
        cls = get_registry().get("scorer", self.base).obj
        accepted = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(self.base_kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"{owner}.base_kwargs: scorer {self.base!r} ({cls.__name__}) has no parameter "
                            f"{', '.join(repr(u) for u in unknown)}; accepted: {', '.join(accepted) or '(none)'}.")
        object.__setattr__(self, "_base", cls(**self.base_kwargs))
        if getattr(self._base, "needs", None) == "reconstruction":
            raise ValueError(f"{owner}.base {self.base!r} is scored by a reconstruction pass after the prefill, which "
                             "'critical' cannot refine (it rescales scores computed from each layer's view); pick a base "
                             "that scores from the view (snapkv_window, h2o, tova, knorm, ...).")

    @property
    def chunked_prefill(self) -> bool:
        """Chunkable when the base scorer is (the value norms need only the held values), unless the base keeps
        running scores across chunks (``accumulates_scores``, H2O): the engine would accumulate the refined ones."""
        return bool(getattr(self._base, "chunked_prefill", False)) and not getattr(self._base, "accumulates_scores", False)

    @property
    def needs_window(self) -> bool:
        """As the base scorer: whether it reads the observation window's queries."""
        return bool(getattr(self._base, "needs_window", False))

    @property
    def reads_every_query(self) -> bool:
        """As the base scorer: the engine hands over the queries the layer computed (``h2o``)."""
        return bool(getattr(self._base, "reads_every_query", False))

    def minimum_budget(self, window: int) -> int:
        """The base scorer's minimum budget (its sinks plus the window), else the window."""
        minimum = getattr(self._base, "minimum_budget", None)
        return window if minimum is None else int(minimum(window))

    def forced_keep(self, view: LayerView) -> torch.Tensor | None:
        """The base scorer's forced entries (sinks), if any."""
        forced = getattr(self._base, "forced_keep", None)
        return None if forced is None else forced(view)

    def staged_scores(self, view: LayerView) -> tuple[torch.Tensor, torch.Tensor]:
        """``(stage one, stage two)``: the base scores ``s`` and ``(s + epsilon) * norms``, each ``(B, Hkv, T)`` float32."""
        if view.output_projection is None:
            raise ValueError(
                "The 'critical' scorer needs the attention's output projection (view.output_projection), but this "
                f"LayerView of layer {view.layer_idx} has none; build views with ModelAdapter.layer_view."
            )
        base = self._base.score(view).float()  # (B, Hkv, T)
        norms = projected_value_norms(view.values, view.output_projection, view.num_query_heads)  # (B, Hkv, T)
        valid = view.valid[:, None, :]
        low = torch.where(valid, base, torch.inf).amin(dim=-1, keepdim=True)  # (B, Hkv, 1) lowest real score
        shifted = torch.where(low < 0, base - low, base)  # a head with negative scores (knorm: -||k||) starts at 0
        refined = (shifted + self.epsilon) * norms
        return base, torch.where(valid, refined, 0.0)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 refined scores ``(s + epsilon) * norms`` (stage two)."""
        return self.staged_scores(view)[1]
