"""Per-layer budget profiles: the file format the ``learned`` allocator reads, and where shipped ones live.

A profile is the mean of an attention statistic (:mod:`kvpress_lab.attention`) per full-attention
layer over calibration prompts, normalised to sum to 1. Profiles shipped with the package live in
``kvpress_lab/profiles/<name>.json`` and are selected by ``<name>``; fitting one is
:func:`kvpress_lab.calibration.calibrate` (``kvpress-lab calibrate``). This module reads and
writes files only: it imports neither torch nor the engine.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

from kvpress_lab.errors import KVPressLabError
from kvpress_lab.validation import check_choice, check_int

__all__ = ["PROFILE_VERSION", "STATISTICS", "ProfileError", "Profile", "shipped_profiles"]

PROFILE_VERSION = 1
#: Statistics a profile can be fitted on: mean entropy (nats), or the fraction of the prompt's
#: tokens holding 90% of the window's attention.
STATISTICS = ("entropy", "coverage")
_REQUIRED = ("version", "model", "num_layers", "statistic", "settings", "weights")


class ProfileError(KVPressLabError, ValueError):
    """A profile (or calibration input) is missing, malformed, or does not fit the model."""


@dataclass(frozen=True)
class Profile:
    """Per-layer weights fitted on calibration prompts.

    Parameters
    ----------
    model : str
        Name of the model the profile was fitted on.
    num_layers : int
        ``L``, full-attention layers of that model.
    statistic : str
        One of :data:`~kvpress_lab.profile.STATISTICS`.
    weights : list[float]
        ``L`` values ``>= 0`` summing to 1: each layer's share of the total budget.
    settings : dict
        How it was fitted (window, mass, prompts, lengths, seed...), recorded for reproducibility.
    version : int
        File format version.
    """

    model: str
    num_layers: int
    statistic: str
    weights: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    version: int = PROFILE_VERSION

    def __post_init__(self) -> None:
        check_int("Profile", "num_layers", self.num_layers, minimum=1)
        if not isinstance(self.model, str) or not isinstance(self.settings, dict):
            raise TypeError(f"Profile.model must be a str and Profile.settings a dict, got {type(self.model).__name__} "
                            f"and {type(self.settings).__name__}.")
        check_choice("Profile", "statistic", self.statistic, STATISTICS)
        if self.version != PROFILE_VERSION:
            raise ValueError(f"Profile.version must be {PROFILE_VERSION} (the format this kvpress_lab reads), got {self.version!r}.")
        if not isinstance(self.weights, (list, tuple)) or len(self.weights) != self.num_layers:
            got = len(self.weights) if isinstance(self.weights, (list, tuple)) else type(self.weights).__name__
            raise ValueError(f"Profile.weights must be a list of num_layers={self.num_layers} numbers, got {got}.")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in self.weights):
            raise ValueError(f"Profile.weights must be finite numbers >= 0, got {list(self.weights)}.")
        if sum(self.weights) <= 0:
            raise ValueError("Profile.weights must not all be zero.")
        object.__setattr__(self, "weights", [float(w) for w in self.weights])

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict."""
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike[str]) -> pathlib.Path:
        """Write the profile as JSON (parent folders created); returns the path."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str]) -> Profile:
        """Read a profile file, or a shipped profile by name (see :func:`shipped_profiles`)."""
        path = _resolve(name_or_path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ProfileError(f"Profile file {str(path)!r} is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise ProfileError(f"Profile file {str(path)!r} must hold a JSON object, got {type(data).__name__}.")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ProfileError(f"Profile file {str(path)!r} lacks the field(s) {missing}; expected {list(_REQUIRED)}.")
        try:
            return cls(**{key: data[key] for key in _REQUIRED})
        except (TypeError, ValueError) as exc:
            raise ProfileError(f"Profile file {str(path)!r} is malformed: {exc}") from None


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in ``kvpress_lab/profiles``."""
    folder = importlib.resources.files("kvpress_lab") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")) if folder.is_dir() else []


def _resolve(name_or_path: str | os.PathLike[str]) -> pathlib.Path:
    text = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text:
        raise ProfileError(f"A profile must be a file path or a shipped profile name, got {name_or_path!r}.")
    path = pathlib.Path(text)
    if path.is_file():
        return path
    if text in shipped_profiles():
        return pathlib.Path(str(importlib.resources.files("kvpress_lab") / "profiles" / f"{text}.json"))
    raise ProfileError(f"Profile {text!r} is neither an existing file nor a shipped profile "
                     f"(shipped: {', '.join(shipped_profiles()) or 'none'}).")
