"""Fitting per-layer profiles for the ``learned`` allocator on a model's own attention.

:func:`calibrate` measures the attention funnel (:mod:`kvpress_lab.analysis.funnel`) on
calibration prompts and returns a :class:`~kvpress_lab.profile.Profile`; the file format and the
shipped profiles live in :mod:`kvpress_lab.profile` (re-exported here), the command line in
:mod:`kvpress_lab.cli.calibrate`.
"""

from __future__ import annotations

import pathlib

import torch

from kvpress_lab.analysis.funnel import attention_funnel
from kvpress_lab.profile import PROFILE_VERSION, STATISTICS, Profile, ProfileError, shipped_profiles
from kvpress_lab.validation import check_choice

__all__ = ["PROFILE_VERSION", "STATISTICS", "ProfileError", "Profile", "calibrate", "shipped_profiles"]


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
