"""Fixtures of the embedded-model tests: the real converted checkpoint (converted once per machine).

The real conversion (about half a minute) happens at most once per machine: the
session-scoped fixture uses the default cache folder, which later sessions reuse. The
conversion machinery (lock, atomic rename, env var) is tested with a fake converter.
"""

from __future__ import annotations

import pathlib

import pytest

from helpers.embedded import INSTALL_HINT, has_distribution
from kvpress_lab.models import embedded_checkpoint_dir


@pytest.fixture(scope="session")
def converted_checkpoint() -> pathlib.Path:
    """The real converted checkpoint in the default cache (converted on the first run only)."""
    if not has_distribution():
        pytest.skip(f"{INSTALL_HINT} to run the embedded-model tests")
    return embedded_checkpoint_dir()
