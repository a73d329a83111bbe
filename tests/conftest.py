"""Shared fixtures: tiny random models of every supported family."""

from __future__ import annotations

import pytest

from helpers.tiny_models import FAMILIES, tiny_model


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    """Every supported model family."""
    return request.param


@pytest.fixture
def model(family):
    """A tiny sdpa model of each family."""
    return tiny_model(family)
