from __future__ import annotations

import os
import sys

import pytest

import kvpress_lab.registry as registry_module
from kvpress_lab.registry import Registry

sys.path.insert(0, os.path.dirname(__file__))

from plugins_for_tests import TestPlugin  # noqa: E402


@pytest.fixture
def test_strategies(monkeypatch):
    """Make the test-only strategies (test_hand, test_staircase, ...) available to Recipe."""
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(extra_plugins=[("tests:engine", TestPlugin())]))
