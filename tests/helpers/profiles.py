"""Learned-allocator profiles for the tiny test models (the shipped one fits SmolLM2's 30 layers)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from kvpress_lab.calibration import Profile

_DIR = Path(tempfile.mkdtemp(prefix="kvpress_lab_test_profiles_"))


@functools.cache
def profile_path(num_layers: int) -> str:
    """Path of a profile for ``num_layers`` full-attention layers, weights decreasing with depth."""
    weights = [float(num_layers - layer) for layer in range(num_layers)]
    return str(Profile("tiny-test", num_layers, "entropy", weights).save(_DIR / f"tiny-{num_layers}.json"))


def allocator_kwargs(allocator: str, num_layers: int) -> dict:
    """Extra allocator arguments a registered allocator needs on a model of ``num_layers`` layers."""
    return {"profile": profile_path(num_layers)} if allocator == "learned" else {}
