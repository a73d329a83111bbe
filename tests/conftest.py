"""Shared fixtures: tiny random models of every supported family."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tiny_models import FAMILIES, tiny_model  # noqa: E402


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    """Every supported model family."""
    return request.param


@pytest.fixture
def model(family):
    """A tiny sdpa model of each family."""
    return tiny_model(family)
