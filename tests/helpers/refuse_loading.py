"""Stand-in model loaders for CLI tests.

- :func:`refuse_loading`: a check that comes after loading fails the test instead of loading
  weights. Import both names into a test module (``from helpers.refuse_loading import ModelLoaded,
  refuse_loading``): the autouse fixture then replaces every loader the commands use by one that
  raises :class:`ModelLoaded`.
- :func:`tiny_loaded`: loading gives a tiny random Llama (2 layers) and a character tokenizer
  (import the fixture by name where a test needs it).
"""

from __future__ import annotations

import pytest

import kvpress_lab.models
from helpers.char_tokenizer import CharTokenizer
from helpers.tiny_models import tiny_model
from kvpress_lab.benchmarks import bench, commands

__all__ = ["ModelLoaded", "refuse_loading", "tiny_loaded"]


class ModelLoaded(Exception):
    """Raised by the stand-in loader: the command got as far as loading the model."""


@pytest.fixture(autouse=True)
def refuse_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(commands, "load", refuse)
    monkeypatch.setattr(bench, "load", refuse)
    monkeypatch.setattr(kvpress_lab.models, "load_model", refuse)  # calibrate and commands.load call it


@pytest.fixture
def tiny_loaded(monkeypatch):
    """Loading gives a tiny random Llama (2 layers) and a character tokenizer: ``(model, tokenizer)``."""
    loaded = (tiny_model("llama", layers=2), CharTokenizer())
    monkeypatch.setattr(commands, "load", lambda args: loaded)
    monkeypatch.setattr(bench, "load", lambda args: loaded)
    return loaded
