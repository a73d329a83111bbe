"""Learned allocation: per-layer budgets from a profile calibrated offline on the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kvpress_lab.allocators.adaptive import weighted_layer_budgets
from kvpress_lab.budgets import BudgetRequest
from kvpress_lab.profile import Profile, ProfileError
from kvpress_lab.validation import check_float

__all__ = ["LearnedAllocator"]


@dataclass(frozen=True)
class LearnedAllocator:
    """Learned: split ``L * B`` over layers by a per-layer profile fitted on calibration prompts.

    Based on https://arxiv.org/abs/2406.02069 (PyramidKV)'s observation that attention funnels
    with depth: instead of PyramidKV's fixed arithmetic schedule, each layer's share is the mean
    attention statistic measured on the model itself (:func:`kvpress_lab.calibration.calibrate`,
    ``kvpress-lab calibrate``), like :class:`~kvpress_lab.allocators.adaptive.AdaptiveAllocator`
    but known before prefill, so layers are evicted one by one (no global-scope memory peak).

    Parameters
    ----------
    profile : str
        Path to a profile JSON file, or the name of a shipped profile. Default
        ``"smollm2-135m-instruct"`` (the embedded model, 30 layers). Loaded and validated when
        the allocator is built; a profile for a model with another number of layers is rejected
        when budgets are asked for.
    floor : float
        Every layer keeps at least ``max(min(W, T), floor(floor * B))`` entries, ``floor`` in
        ``[0, 1]``. Default 0.2.

    Examples
    --------
    >>> allocator = LearnedAllocator()
    >>> budgets = allocator.allocate(BudgetRequest(30, 3, 2048, 128, 8))
    >>> sum(budgets) == 30 * 128, min(budgets) >= 25
    (True, True)
    """

    name: ClassVar[str] = "learned"
    scope: ClassVar[str] = "static"
    profile: str = "smollm2-135m-instruct"
    floor: float = 0.2

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.profile, str):
            raise TypeError(f"{owner}.profile must be a path or a shipped profile name (str), got {type(self.profile).__name__}.")
        object.__setattr__(self, "floor", check_float(owner, "floor", self.floor, minimum=0.0, maximum=1.0))
        object.__setattr__(self, "_loaded", Profile.load(self.profile))

    @property
    def loaded_profile(self) -> Profile:
        """The :class:`~kvpress_lab.profile.Profile` read from ``profile``."""
        return self._loaded  # type: ignore[attr-defined]

    def check_layers(self, num_layers: int) -> None:
        """Refuse a model whose number of full-attention layers differs from the profile's.

        Called by :meth:`Recipe.apply <kvpress_lab.Recipe.apply>` when the model is known, so a
        wrong profile fails before any prefill.
        """
        profile = self.loaded_profile
        if profile.num_layers != num_layers:
            raise ProfileError(
                f"Profile {self.profile!r} was calibrated on {profile.model!r} with {profile.num_layers} full-attention "
                f"layers, but this model has {num_layers}. Calibrate one for this model (`kvpress-lab calibrate --model "
                "<model> --out profile.json`) and pass allocator_kwargs={'profile': 'profile.json'}."
            )

    def allocate(self, request: BudgetRequest) -> list[int]:
        """``L`` budgets (window included) in ``[max(min(W, T), floor * B), T]`` summing to ``L * B``."""
        self.check_layers(request.num_layers)
        return weighted_layer_budgets("LearnedAllocator", request, self.loaded_profile.weights, self.floor)
