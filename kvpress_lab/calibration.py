"""Calibrated per-layer profiles for the ``learned`` allocator: fit, save, load, and the CLI glue.

A profile is the mean of an attention statistic (see :mod:`kvpress_lab.analysis.funnel`) per
full-attention layer over calibration prompts, normalised to sum to 1. Profiles shipped with the
package live in ``kvpress_lab/profiles/<name>.json`` and are selected by ``<name>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import math
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

import torch

from kvpress_lab.analysis.funnel import attention_funnel
from kvpress_lab.errors import KVPressLabError
from kvpress_lab.validation import check_choice, check_int

__all__ = [
    "PROFILE_VERSION", "STATISTICS", "ProfileError", "Profile", "calibrate", "shipped_profiles",
    "add_calibrate_arguments", "run_calibrate",
]

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
        One of :data:`STATISTICS`.
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


@torch.no_grad()
def calibrate(
    model: torch.nn.Module, prompts: list[torch.Tensor], *, window: int = 32, statistic: str = "entropy",
    mass: float = 0.9, model_name: str | None = None,
) -> Profile:
    """Fit a :class:`Profile` on ``prompts``: the per-layer mean of ``statistic``, normalised to sum to 1.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a supported family.
    prompts : list[torch.Tensor]
        Calibration prompts, each ``(T_i,)`` (or ``(1, T_i)``) token ids; run one at a time.
    window : int
        ``W`` of :func:`~kvpress_lab.analysis.attention_funnel`. Default 32.
    statistic : {"entropy", "coverage"}
        Mean entropy (nats), or the fraction of the prompt holding ``mass`` of the attention.
    mass : float
        Mass of the coverage statistic. Default 0.9.
    model_name : str or None
        Recorded in the profile; default: the model's ``config._name_or_path``.
    """
    check_choice("calibrate", "statistic", statistic, STATISTICS)
    if not prompts:
        raise ValueError("calibrate needs at least one prompt, got none.")
    device = next(model.parameters()).device
    sums: list[float] | None = None
    for prompt in prompts:
        ids = prompt.reshape(1, -1).to(device)
        report = attention_funnel(model, ids, window=window, mass=mass)
        values = report.entropy if statistic == "entropy" else report.coverage_fraction
        sums = values if sums is None else [a + b for a, b in zip(sums, values)]
    means = [s / len(prompts) for s in sums]
    name = model_name or pathlib.PurePath(str(getattr(model.config, "_name_or_path", "") or type(model).__name__)).name
    settings = {"window": window, "mass": mass, "num_prompts": len(prompts), "layers": report.layers,
                "prompt_lengths": [int(p.numel()) for p in prompts], "means": means}
    return Profile(model=name, num_layers=len(means), statistic=statistic,
                   weights=[m / sum(means) for m in means], settings=settings)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvpress-lab calibrate``."""
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name or path (default: the embedded model)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts-file", help="text file of calibration prompts, separated by blank lines")
    source.add_argument("--synthetic", type=int, metavar="N", help="N seeded synthetic prompts (default 8)")
    parser.add_argument("--length", type=int, default=1024, help="tokens per prompt (synthetic: exact, file: at most)")
    parser.add_argument("--window", type=int, default=32, help="observation window W (default 32)")
    parser.add_argument("--statistic", choices=STATISTICS, default="entropy", help="per-layer statistic (default entropy)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", required=True, help="where to write the profile JSON")


def run_calibrate(args: argparse.Namespace) -> int:
    """Handler of ``kvpress-lab calibrate``: fit a profile and write it to ``--out``."""
    from kvpress_lab.analysis.synthetic import synthetic_prompts
    from kvpress_lab.models import load_model

    for flag, value, minimum in (("--length", args.length, 2), ("--window", args.window, 1), ("--synthetic", args.synthetic, 1)):
        if value is not None and value < minimum:
            raise ProfileError(f"calibrate {flag} must be >= {minimum}, got {value}.")
    text = ""
    if args.prompts_file:
        try:
            text = pathlib.Path(args.prompts_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"calibrate cannot read --prompts-file {args.prompts_file!r}: {exc}.") from None
    model, tokenizer = load_model(args.model, device=args.device)
    if args.prompts_file:
        chunks = [c.strip() for c in text.split("\n\n") if c.strip()]
        prompts = [torch.tensor(tokenizer(c, add_special_tokens=False)["input_ids"][-args.length:]) for c in chunks]
        prompts = [p for p in prompts if p.numel() >= 2]
        if not prompts:
            raise ProfileError(f"--prompts-file {args.prompts_file!r} holds no prompt of 2 tokens or more.")
        settings = {"source": str(args.prompts_file)}
    else:
        count = 8 if args.synthetic is None else args.synthetic
        prompts = synthetic_prompts(tokenizer, count, args.length, seed=args.seed)
        settings = {"source": "synthetic", "seed": args.seed}
    profile = calibrate(model, prompts, window=args.window, statistic=args.statistic, model_name=str(args.model))
    profile = dataclasses.replace(profile, settings={**profile.settings, **settings})
    path = profile.save(args.out)
    print(f"Wrote a {profile.num_layers}-layer {profile.statistic} profile of {profile.model} "
          f"({len(prompts)} prompts) to {path}")
    return 0
