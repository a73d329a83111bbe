from __future__ import annotations

import pytest

import kvpress_lab.registry as registry_module
from helpers.engine_plugins import TestPlugin
from kvpress_lab.registry import Registry


@pytest.fixture
def test_strategies(monkeypatch):
    """Make the test-only strategies (test_hand, test_staircase, ...) available to Recipe."""
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(extra_plugins=[("tests:engine", TestPlugin())]))
