"""Named recipe presets (``Recipe.preset("pyramidkv")``), registered by plugins."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kvpress_lab.validation import NAME_PATTERN

__all__ = ["Preset"]


@dataclass(frozen=True)
class Preset:
    """A named set of :class:`~kvpress_lab.Recipe` arguments.

    Parameters
    ----------
    name : str
        Registry name, lower case (``"pyramidkv"``).
    description : str
        One line shown by ``kvpress-lab list``.
    recipe : Mapping[str, Any]
        Keyword arguments of :class:`~kvpress_lab.Recipe` (``allocator``, ``scorer``,
        ``window``, ``scorer_kwargs``, ...). Users override any of them in ``Recipe.preset``.
    paper : str
        Link to the method's paper, or ``""``.

    Examples
    --------
    >>> Preset("my-snapkv", "SnapKV with a wide window", {"allocator": "uniform", "window": 32}).name
    'my-snapkv'
    """

    name: str
    description: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    paper: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ValueError(f"Preset.name must match {NAME_PATTERN.pattern} (lower case), got {self.name!r}.")
        if not isinstance(self.recipe, Mapping):
            raise TypeError(f"Preset.recipe must be a mapping of Recipe arguments, got {type(self.recipe).__name__}.")
        object.__setattr__(self, "recipe", MappingProxyType(dict(self.recipe)))
