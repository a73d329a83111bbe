"""Budget semantics in one place: what a recipe's numbers mean for one prompt, and the rule they obey.

A recipe asks for a *budget* (mean entries kept per layer and KV head, observation window
included) or a *compression ratio*; a prompt of ``n`` real tokens turns either into an integer
budget (:meth:`BudgetSpec.resolve`). Every layer keeps at least the *minimum kept*: the
observation window plus the entries the scorer forces (attention sinks). The one rule is

    a budget that compresses (``n > budget``) must be ``>= min_kept``,

checked by :func:`check_minimum_kept` wherever a budget is chosen (the recipe's absolute
budget at construction, a hand-made :class:`BudgetRequest`); a compression ratio that leaves a
short prompt fewer entries is clamped up to the minimum, with a warning (:meth:`BudgetSpec.request`).
What plugins hand back is guarded where it comes back: :func:`checked_allocation` (an
allocator's per-layer budgets) and :func:`check_forced_fit` (a scorer's forced entries).

This module takes numbers and the allocator, never a :class:`~kvpress_lab.Recipe`, so the engine,
the recipe and plugins can all use it without importing each other.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from kvpress_lab.capabilities import SCORER
from kvpress_lab.validation import check_int

__all__ = [
    "BudgetRequest",
    "BudgetSpec",
    "minimum_kept",
    "check_minimum_kept",
    "check_budget_request",
    "checked_allocation",
    "checked_head_allocation",
    "check_forced_fit",
    "RATIO_ROUNDINGS",
    "kept_from_ratio",
]

#: How a compression ratio becomes an integer count: ``"half_up"`` (this project's default,
#: ``floor((1 - r) * T + 0.5)``) or ``"kvpress"`` (NVIDIA kvpress's ``ScorerPress``,
#: ``max(1, int(T * (1 - r)))``: truncation, in the same float expression).
RATIO_ROUNDINGS = ("half_up", "kvpress")

BudgetSource = Literal["recipe", "request"]


def kept_from_ratio(prompt_length: int, compression_ratio: float, rounding: str = "half_up") -> int:
    """Entries a ratio keeps of ``prompt_length``: rounded half up, or truncated as kvpress does.

    ``"kvpress"`` evaluates kvpress's own expression, float error included (``int(10 * (1 - 0.9))``
    is 0, clamped to 1), so its counts are reproduced exactly, not approximately.

    >>> kept_from_ratio(4009, 0.5), kept_from_ratio(4009, 0.5, "kvpress")
    (2005, 2004)
    >>> kept_from_ratio(1000, 0.9), kept_from_ratio(1000, 0.9, "kvpress")
    (100, 99)
    """
    if rounding == "kvpress":
        return max(1, int(prompt_length * (1 - compression_ratio)))
    if rounding == "half_up":
        return int(math.floor((1.0 - compression_ratio) * prompt_length + 0.5))
    raise ValueError(f"ratio rounding must be one of {RATIO_ROUNDINGS}, got {rounding!r}.")


def minimum_kept(window: int, scorer: Any) -> int:
    """Entries every layer keeps: the window ``W``, or more when the scorer forces some (sinks).

    A scorer may define ``minimum_budget(window) -> int`` (see :class:`~kvpress_lab.protocols.Scorer`).

    >>> from kvpress_lab.scorers.sink import SinkScorer
    >>> minimum_kept(8, SinkScorer(num_sinks=4)), minimum_kept(8, object())
    (12, 8)
    """
    declared = SCORER.of(scorer, "minimum_budget")
    return window if declared is None else max(window, int(declared(window)))


def check_minimum_kept(
    budget: int,
    min_kept: int,
    *,
    window: int,
    source: BudgetSource,
    prompt_length: int | None = None,
    scorer: str = "",
    field: str = "budget",
) -> None:
    """The budget rule: a budget that compresses must hold the ``min_kept`` entries every layer keeps.

    Parameters
    ----------
    budget : int
        The budget chosen (entries per layer and KV head, window included).
    min_kept : int
        Window plus forced entries (:func:`minimum_kept`).
    window : int
        ``W``, named in the message.
    source : {"recipe", "request"}
        Where the budget came from, for the message: a recipe's absolute ``budget`` or a
        hand-made :class:`BudgetRequest`. (A ``compression_ratio`` too small for a short prompt
        is clamped up to ``min_kept`` instead: :meth:`BudgetSpec.request`.)
    prompt_length : int or None
        ``n``, real tokens; a prompt that fits the budget (``n <= budget``) is not compressed and
        always passes. ``None``: the prompt is not known yet (checked for every length).
    scorer : str
        Named in the message.
    field : str
        The recipe field named in the message (``"budget"``, ``"decode_budget"``).

    Raises
    ------
    ValueError
        When ``budget < min_kept`` for a prompt that would be compressed.

    Examples
    --------
    >>> check_minimum_kept(4, 8, window=8, source="request", prompt_length=4)  # not compressed: fine
    >>> check_minimum_kept(4, 8, window=8, source="request", prompt_length=100)
    Traceback (most recent call last):
    ...
    ValueError: BudgetRequest needs budget >= min_kept when the prompt is compressed; got budget=4, min_kept=8 for a prompt of 100 tokens. Raise the budget or shrink the window.
    """
    if budget >= min_kept or (prompt_length is not None and prompt_length <= budget):
        return
    if source == "request":
        raise ValueError(
            f"BudgetRequest needs budget >= min_kept when the prompt is compressed; got budget={budget}, "
            f"min_kept={min_kept} for a prompt of {prompt_length} tokens. Raise the budget or shrink the window."
        )
    if min_kept == window:
        raise ValueError(
            f"Recipe.{field} must be >= window={window} (the observation window is always kept and counts inside the "
            f"budget), got {field}={budget}. Raise the budget or shrink the window."
        )
    raise ValueError(
        f"Recipe.{field} must be >= {min_kept} for scorer {scorer!r} (its forced entries plus the window of {window}), "
        f"got {field}={budget}."
    )


@dataclass(frozen=True, init=False)
class BudgetRequest:
    """What an allocator is asked: split ``budget`` entries per layer (on average) over ``L`` layers.

    Parameters
    ----------
    num_layers : int
        ``L``, the number of compressible layers (sliding-window layers are not counted).
    num_kv_heads : int
        ``Hkv``.
    prompt_length : int
        ``T`` of this sequence, padding excluded.
    budget : int
        Mean entries per layer and KV head to keep, window included (already resolved from a
        compression ratio when the recipe used one).
    min_kept : int
        Entries every layer must keep: the observation window ``W`` plus entries the scorer
        forces (attention sinks; see :attr:`kvpress_lab.Recipe.minimum_budget`). Every layer's
        budget must be at least ``min(min_kept, T)``. Called ``window`` before 0.2; the old keyword
        and attribute still work for one release, with a :class:`DeprecationWarning`.
    layer_statistics : torch.Tensor or None
        ``(L,)`` float32 per-layer statistics (e.g. attention entropy) for allocators whose
        scope is ``"global"``; ``None`` for static allocators.
    compression_ratio : float or None
        The recipe's ratio when it used one (``budget`` is then already resolved from it), for
        allocators whose published formula works on the ratio itself (``pyramid_kvpress``);
        ``None`` when the recipe gave an absolute budget.

    Raises
    ------
    TypeError, ValueError
        On construction, for a field of the wrong type or range, and when a budget that compresses
        (``T > budget``) is below ``min_kept`` (:func:`check_minimum_kept`).

    Examples
    --------
    >>> BudgetRequest(num_layers=4, num_kv_heads=2, prompt_length=200, budget=32, min_kept=8).min_kept
    8
    """

    num_layers: int
    num_kv_heads: int
    prompt_length: int
    budget: int
    min_kept: int
    layer_statistics: torch.Tensor | None = None
    compression_ratio: float | None = None

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        prompt_length: int,
        budget: int,
        min_kept: int | None = None,
        layer_statistics: torch.Tensor | None = None,
        *,
        window: int | None = None,
        compression_ratio: float | None = None,
    ):
        if window is not None:
            if min_kept is not None:
                raise TypeError("BudgetRequest takes min_kept or its deprecated name window, not both.")
            warnings.warn("BudgetRequest(window=...) is deprecated; it is called min_kept now.", DeprecationWarning, stacklevel=2)
            min_kept = window
        if min_kept is None:
            raise TypeError("BudgetRequest needs min_kept (the observation window plus the scorer's forced entries).")
        values = {
            "num_layers": check_int("BudgetRequest", "num_layers", num_layers, minimum=1),
            "num_kv_heads": check_int("BudgetRequest", "num_kv_heads", num_kv_heads, minimum=1),
            "prompt_length": check_int("BudgetRequest", "prompt_length", prompt_length, minimum=1),
            "budget": check_int("BudgetRequest", "budget", budget, minimum=1),
            "min_kept": check_int("BudgetRequest", "min_kept", min_kept, minimum=0),
            "layer_statistics": layer_statistics,
            "compression_ratio": _optional_ratio(compression_ratio),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)
        check_minimum_kept(self.budget, self.min_kept, window=self.min_kept, source="request", prompt_length=self.prompt_length)

    @property
    def window(self) -> int:
        """Deprecated name of ``min_kept``."""
        warnings.warn("BudgetRequest.window is deprecated; read BudgetRequest.min_kept.", DeprecationWarning, stacklevel=2)
        return self.min_kept


def _optional_ratio(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"BudgetRequest.compression_ratio must be None or a float in [0, 1), got {value!r}.")
    return float(value)


def check_budget_request(owner: str, request: BudgetRequest) -> tuple[int, int, int, int]:
    """``(L, T, B, min_kept)`` of a request (validated when it was built); ``owner`` is the calling allocator.

    >>> check_budget_request("PyramidAllocator", BudgetRequest(4, 2, 1000, 64, 8))
    (4, 1000, 64, 8)
    """
    if not isinstance(request, BudgetRequest):
        raise TypeError(f"{owner} expects a kvpress_lab.BudgetRequest, got {type(request).__name__}.")
    return request.num_layers, request.prompt_length, request.budget, request.min_kept


@dataclass(frozen=True)
class BudgetSpec:
    """A recipe's budget numbers, independent of any prompt.

    Parameters
    ----------
    budget : int or None
        Absolute mean entries per layer (window included), or ``None`` with a ratio.
    compression_ratio : float or None
        Fraction of the prompt to remove, in ``[0, 1)``, or ``None`` with a budget.
    window : int
        ``W``, the observation window.
    min_kept : int
        ``W`` plus the scorer's forced entries (:func:`minimum_kept`).
    scorer : str
        The scorer's name, for messages.
    ratio_rounding : {"half_up", "kvpress"}
        How a ratio becomes a count (:func:`kept_from_ratio`).
    """

    budget: int | None
    compression_ratio: float | None
    window: int
    min_kept: int
    scorer: str = ""
    ratio_rounding: str = "half_up"

    def __post_init__(self) -> None:
        if self.ratio_rounding not in RATIO_ROUNDINGS:
            raise ValueError(f"BudgetSpec.ratio_rounding must be one of {RATIO_ROUNDINGS}, got {self.ratio_rounding!r}.")
        if self.budget is not None:
            check_minimum_kept(self.budget, self.min_kept, window=self.window, source="recipe", scorer=self.scorer)

    def resolve(self, prompt_length: int) -> int:
        """The integer budget for a prompt of ``prompt_length`` real tokens (:func:`kept_from_ratio`).

        >>> BudgetSpec(None, 0.75, 8, 8).resolve(1000), BudgetSpec(64, None, 8, 8).resolve(10)
        (250, 64)
        """
        if self.compression_ratio is None:
            return int(self.budget)  # type: ignore[arg-type]
        return kept_from_ratio(prompt_length, self.compression_ratio, self.ratio_rounding)

    def request(self, num_layers: int, num_kv_heads: int, prompt_length: int, statistics: torch.Tensor | None = None) -> BudgetRequest:
        """The :class:`BudgetRequest` for one prompt.

        A ratio that leaves fewer entries than the minimum kept (a short prompt) is clamped up to
        it: the prompt keeps ``min(T, min_kept)`` entries (everything when ``T <= min_kept``), with
        a :class:`UserWarning` naming the prompt lengths concerned, so one short prompt never
        aborts a mixed-length evaluation.
        """
        budget = self.resolve(prompt_length)
        if budget < self.min_kept and prompt_length <= self.min_kept:
            budget = prompt_length  # nothing could be evicted anyway: keep everything
        elif budget < self.min_kept:
            warnings.warn(
                f"compression_ratio={self.compression_ratio} leaves fewer entries than the {self.min_kept} always kept "
                f"(observation window of {self.window} plus the scorer's forced entries) for prompts shorter than "
                f"{self._shortest_unclamped()} tokens; such prompts keep min(T, {self.min_kept}) entries.",
                UserWarning,
                stacklevel=2,
            )
            budget = self.min_kept
        return BudgetRequest(num_layers, num_kv_heads, prompt_length, budget, min(self.min_kept, prompt_length), statistics,
                             compression_ratio=self.compression_ratio)

    def _shortest_unclamped(self) -> int:
        """Smallest prompt length whose resolved ratio budget holds the minimum kept."""
        keep = 1.0 - (self.compression_ratio or 0.0)
        length = max(1, math.ceil((self.min_kept - 0.5) / keep) - 1)  # closed form, then fix float rounding
        while self.resolve(length) < self.min_kept:
            length += 1
        return length


def checked_allocation(budgets: object, request: BudgetRequest, name: str) -> list[int]:
    """Guard an allocator's answer: ``L`` integers, each ``>= min(min_kept, T)``."""
    if not isinstance(budgets, (list, tuple)) or len(budgets) != request.num_layers:
        raise ValueError(f"Allocator {name!r} must return {request.num_layers} per-layer budgets, got {budgets!r}.")
    floor = min(request.min_kept, request.prompt_length)
    return [_checked_budget(value, floor, name, f"layer {layer}") for layer, value in enumerate(budgets)]


def checked_head_allocation(budgets: object, request: BudgetRequest, name: str) -> list[list[int]]:
    """Guard a per-head allocator's answer: ``L`` lists of ``Hkv`` integers, each ``>= min(min_kept, T)``."""
    if not isinstance(budgets, (list, tuple)) or len(budgets) != request.num_layers or any(
            not isinstance(row, (list, tuple)) or len(row) != request.num_kv_heads for row in budgets):
        raise ValueError(f"Allocator {name!r} (per_head) must return {request.num_layers} lists of {request.num_kv_heads} "
                         f"per-head budgets, got {budgets!r}.")
    floor = min(request.min_kept, request.prompt_length)
    return [[_checked_budget(value, floor, name, f"layer {layer}, KV head {head}") for head, value in enumerate(row)]
            for layer, row in enumerate(budgets)]


def _checked_budget(value: object, floor: int, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Allocator {name!r} returned a non-integer budget {value!r} for {where}.")
    if value < floor:
        raise ValueError(
            f"Allocator {name!r} gave {where} a budget of {value}, below min(window, T)={floor}; "
            "the observation window must fit in every layer."
        )
    return int(value)


def check_forced_fit(forced_counts: torch.Tensor, keep: torch.Tensor) -> None:
    """Guard a scorer's forced entries: no ``(row, head)`` forces more entries than it keeps.

    ``forced_counts`` and ``keep`` are ``(B, Hkv)`` (``keep`` may be ``(B, 1)``), any device.
    """
    keep = keep.to(forced_counts.device)
    if bool((forced_counts > keep).any()):
        raise ValueError(
            f"More entries are forced (window + sinks: up to {int(forced_counts.max())}) than the budget keeps "
            f"(as few as {int(keep.min())}). Raise the budget or shrink the window / number of sinks."
        )
