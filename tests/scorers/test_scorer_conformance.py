"""Conformance suite for every registered scorer (built-in and third-party plugins), defaults only."""

from __future__ import annotations

import pytest
import torch
from helpers.scorer_views import DEVICES, make_view
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpress_lab import get_registry

#: Scorers scored by a forward pass after the prefill (kvzip): the engine computes their scores, checked in
#: tests/scorers/test_kvzip.py and the engine's recipe matrix; here only their view-level contract.
RECONSTRUCTION = [n for n in get_registry().names("scorer") if getattr(get_registry().get("scorer", n).obj, "needs", None) == "reconstruction"]
SCORERS = [n for n in get_registry().names("scorer") if n not in RECONSTRUCTION]


def test_builtin_scorers_are_registered():
    assert {"snapkv_window", "h2o", "sink", "knorm", "random", "tova"} <= set(SCORERS)


@st.composite
def view_specs(draw):
    """Sizes of a random LayerView: B 1..3, Hkv 1..2, G 1..3, T 1..40, W <= T, optional left padding."""
    batch = draw(st.integers(1, 3))
    length = draw(st.one_of(st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 31, 37, 40]), st.integers(1, 40)))
    pad = draw(st.lists(st.integers(0, length - 1), min_size=batch, max_size=batch)) if draw(st.booleans()) else None
    return dict(
        batch=batch,
        kv_heads=draw(st.integers(1, 2)),
        groups=draw(st.integers(1, 3)),
        length=length,
        window=draw(st.integers(1, length)),
        head_dim=draw(st.sampled_from([4, 8])),
        pad=pad,
        seed=draw(st.integers(0, 2**16)),
        layer_idx=draw(st.integers(0, 31)),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SCORERS)
@settings(max_examples=40, deadline=None)
@given(spec=view_specs())
def test_scorer_contract(name, device, spec):
    scorer = get_registry().get("scorer", name).obj()
    view = make_view(**spec, device=device)
    expected_shape = (view.batch_size, view.num_kv_heads, view.seq_len)
    scores = scorer.score(view)
    assert isinstance(scores, torch.Tensor) and tuple(scores.shape) == expected_shape
    assert scores.dtype == torch.float32 and scores.device == view.device
    assert bool(torch.isfinite(scores).all())
    assert torch.equal(scores, scorer.score(view))  # deterministic
    forced_keep = getattr(scorer, "forced_keep", None)
    if forced_keep is not None:
        forced = forced_keep(view)
        if forced is not None:
            assert tuple(forced.shape) == expected_shape and forced.dtype == torch.bool and forced.device == view.device
            assert not bool((forced & ~view.valid[:, None, :]).any())  # never marks padding
            assert torch.equal(forced, forced_keep(view))


@pytest.mark.parametrize("name", RECONSTRUCTION)
@settings(max_examples=20, deadline=None)
@given(spec=view_specs())
def test_reconstruction_scorer_view_contract(name, spec):
    scorer = get_registry().get("scorer", name).obj()
    view = make_view(**spec, device="cpu")
    with pytest.raises(TypeError, match="reconstruction"):
        scorer.score(view)  # never silently scored from one view
    forced = scorer.forced_keep(view)
    assert tuple(forced.shape) == (view.batch_size, view.num_kv_heads, view.seq_len) and forced.dtype == torch.bool
    assert not bool((forced & ~view.valid[:, None, :]).any())
