"""Conformance suite for every registered static allocator (built-in and third-party plugins)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpress_lab import BudgetRequest, get_registry
from helpers.profiles import allocator_kwargs

STATIC = [name for name in get_registry().names("allocator") if get_registry().get("allocator", name).obj.scope == "static"]


def test_builtin_static_allocators_are_registered():
    assert {"uniform", "pyramid"} <= set(STATIC)


@pytest.mark.parametrize("name", STATIC)
@settings(max_examples=60, deadline=None)
@given(
    layers=st.integers(1, 48),
    kv_heads=st.integers(1, 8),
    length=st.integers(1, 20000),
    window=st.integers(1, 64),
    extra=st.integers(0, 3000),
)
def test_static_allocator_contract(name, layers, kv_heads, length, window, extra):
    # defaults only, except a profile with the right number of layers for `learned`
    allocator = get_registry().get("allocator", name).obj(**allocator_kwargs(name, layers))
    window = min(window, length)  # the engine clamps the window to the prompt
    request = BudgetRequest(layers, kv_heads, length, window + extra, window)
    budgets = allocator.allocate(request)
    assert isinstance(budgets, list) and len(budgets) == layers
    assert all(isinstance(b, int) and not isinstance(b, bool) for b in budgets)
    assert all(min(window, length) <= b <= length for b in budgets), budgets
    assert allocator.allocate(request) == budgets  # deterministic
