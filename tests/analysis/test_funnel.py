"""Attention-funnel statistics: exact values on hand-made attention, padding, and a tiny model end to end."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny_models import left_pad, random_prompt, tiny_model

from kvpress_lab.analysis import (
    FunnelReport,
    attention_coverage,
    attention_entropy,
    attention_funnel,
    layer_entropy,
    mass_coverage,
    plot_funnel,
)
from kvpress_lab.layer_view import LayerView

ONE = torch.ones(1, 1, dtype=torch.bool)


def view_of(keys: torch.Tensor, queries: torch.Tensor, valid: torch.Tensor, window: int, scaling: float = 1.0) -> LayerView:
    """A LayerView over hand-made ``(B, Hkv, T, D)`` keys and ``(B, Hq, T, D)`` queries."""
    return LayerView(0, keys, keys, valid, window, scaling, queries.shape[1], lambda a, b: queries[:, :, a:b])


@pytest.mark.parametrize("n", [1, 2, 7, 10, 33, 100])
def test_uniform_attention_over_n_keys(n):
    probs = torch.full((1, 1, 1, n), 1.0 / n)
    assert attention_entropy(probs, ONE).item() == pytest.approx(math.log(n), abs=1e-5)
    assert attention_coverage(probs, ONE, 0.9).item() == math.ceil(0.9 * n - 1e-9)
    assert attention_coverage(probs, ONE, 0.5).item() == math.ceil(0.5 * n - 1e-9)


def test_one_hot_attention():
    probs = torch.zeros(2, 3, 4, 50)
    probs[..., 17] = 1.0
    valid = torch.ones(2, 4, dtype=torch.bool)
    assert attention_entropy(probs, valid).tolist() == [0.0, 0.0]
    assert attention_coverage(probs, valid).tolist() == [1.0, 1.0]


def test_statistics_average_over_heads_and_skip_padded_queries():
    probs = torch.zeros(1, 2, 3, 4)
    probs[0, 0, :, 0] = 1.0  # head 0: one-hot (entropy 0, coverage 1)
    probs[0, 1] = 0.25  # head 1: uniform over 4 (entropy log 4, coverage 4)
    probs[0, :, 0] = 0.0  # query 0 is padding: its row is empty and must not count
    valid = torch.tensor([[False, True, True]])
    assert attention_entropy(probs, valid).item() == pytest.approx(math.log(4) / 2)
    assert attention_coverage(probs, valid).item() == pytest.approx(2.5)


def test_layer_view_statistics_of_uniform_and_one_hot_attention():
    T, D = 12, 4
    zeros = torch.zeros(1, 1, T, D)  # zero queries: uniform attention over every visible key
    valid = torch.ones(1, T, dtype=torch.bool)
    view = view_of(zeros, torch.zeros(1, 2, T, D), valid, window=1)
    assert layer_entropy(view).item() == pytest.approx(math.log(T), abs=1e-5)
    assert mass_coverage(view).item() == math.ceil(0.9 * T)
    keys = torch.zeros(1, 1, T, D)
    keys[0, 0, 3, 0] = 1.0
    queries = torch.zeros(1, 2, T, D)
    queries[..., 0] = 1.0
    sharp = view_of(keys, queries, valid, window=3, scaling=100.0)  # key 3 wins by 100 logits
    assert layer_entropy(sharp).item() == pytest.approx(0.0, abs=1e-5)
    assert mass_coverage(sharp).item() == 1.0


def test_layer_view_statistics_ignore_left_padding():
    T, D, pad = 10, 4, 4
    keys = torch.randn(2, 1, T, D, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(2, 2, T, D, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, :pad] = False
    padded = view_of(keys, queries, valid, window=3)
    alone = view_of(keys[1:, :, pad:], queries[1:, :, pad:], valid[1:, pad:], window=3)
    assert layer_entropy(padded)[1].item() == pytest.approx(layer_entropy(alone).item(), abs=1e-5)
    assert mass_coverage(padded)[1].item() == mass_coverage(alone).item()
    short = torch.zeros(1, T, dtype=torch.bool)
    short[0, -2:] = True  # 2 real tokens, window 3: one padded window query
    only = view_of(torch.zeros(1, 1, T, D), torch.zeros(1, 2, T, D), short, window=3)
    assert layer_entropy(only).item() == pytest.approx(math.log(2) / 2, abs=1e-5)  # queries see 1 and 2 keys


def test_funnel_on_a_tiny_model_and_plot(tmp_path):
    model = tiny_model("llama", layers=3)
    report = attention_funnel(model, random_prompt(1, 40), window=8)
    assert report.layers == [0, 1, 2] and report.num_layers == 3 and report.prompt_lengths == [40]
    assert all(0 < h < math.log(40) for h in report.entropy)
    assert all(1 <= c <= 40 for c in report.coverage)
    assert report.coverage_fraction == pytest.approx([c / 40 for c in report.coverage])
    assert FunnelReport.from_json(report.to_json()) == report
    assert "layer" in report.table() and len(report.table().splitlines()) == 4
    path = plot_funnel(report, tmp_path / "plots" / "funnel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_funnel_with_left_padding_equals_rows_alone():
    model = tiny_model("qwen3", layers=2)
    short, long = random_prompt(1, 20, seed=1)[0], random_prompt(1, 30, seed=2)[0]
    ids, mask = left_pad([short, long])
    batch = attention_funnel(model, ids, mask, window=6)
    rows = [attention_funnel(model, row[None], window=6) for row in (short, long)]
    assert batch.prompt_lengths == [20, 30]
    for stat in ("entropy", "coverage"):
        expected = [(a + b) / 2 for a, b in zip(getattr(rows[0], stat), getattr(rows[1], stat))]
        assert getattr(batch, stat) == pytest.approx(expected, rel=1e-4)


def test_funnel_skips_sliding_window_layers_and_removes_its_hooks():
    model = tiny_model("gemma3", layers=4)
    report = attention_funnel(model, random_prompt(1, 24), window=4)
    assert report.layers == [1, 3]
    assert all(not m._forward_hooks for m in model.modules())


def test_funnel_rejects_bad_inputs():
    model = tiny_model("llama", layers=1)
    with pytest.raises(ValueError, match="attention_funnel.window must be an integer >= 1, got 0"):
        attention_funnel(model, random_prompt(1, 8), window=0)
    with pytest.raises(ValueError, match="left padding"):
        attention_funnel(model, random_prompt(1, 8), torch.tensor([[1] * 7 + [0]]))
    with pytest.raises(ValueError, match=r"mass must be a number > 0.0"):
        attention_funnel(model, random_prompt(1, 8), mass=0)


def test_depth_trend_detects_a_funnel():
    report = FunnelReport("m", [0, 1, 2, 3], 8, 0.9, [64], [4.0, 3.0, 3.5, 1.0], [9.0, 8, 7, 6], [0.1, 0.1, 0.1, 0.1])
    assert report.depth_trend("entropy") == pytest.approx(-0.8)
    assert report.depth_trend("coverage") == pytest.approx(-1.0)
    assert math.isnan(report.depth_trend("coverage_fraction"))
    with pytest.raises(ValueError, match="one value per layer"):
        FunnelReport("m", [0, 1], 8, 0.9, [64], [1.0], [1.0, 2.0], [0.1, 0.2])


def test_funnel_refuses_to_measure_a_compressed_prefill():
    from kvpress_lab import Recipe

    model = tiny_model("llama", layers=2)
    with Recipe(budget=8, window=2).apply(model), pytest.raises(RuntimeError, match="outside `with recipe.apply"):
        attention_funnel(model, random_prompt(1, 20), window=4)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
