"""A stand-in model loader for CLI tests: a check that comes after loading fails the test instead of loading weights.

Import both names into a test module (``from helpers.refuse_loading import ModelLoaded, refuse_loading``):
the autouse fixture then replaces every loader the commands use by one that raises :class:`ModelLoaded`.
"""

from __future__ import annotations

import pytest

import kvpress_lab.models
from kvpress_lab.benchmarks import bench, commands

__all__ = ["ModelLoaded", "refuse_loading"]


class ModelLoaded(Exception):
    """Raised by the stand-in loader: the command got as far as loading the model."""


@pytest.fixture(autouse=True)
def refuse_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(commands, "load", refuse)
    monkeypatch.setattr(bench, "load", refuse)
    monkeypatch.setattr(kvpress_lab.models, "load_model", refuse)  # calibrate and commands.load call it
