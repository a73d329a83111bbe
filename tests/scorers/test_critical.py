"""CriticalKV: the refined score against a brute-force restatement, and the two-stage kept sets exactly."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.scorer_views import make_view
from helpers.tiny_models import left_pad, random_prompt, tiny_model

from kvpress_lab import Recipe
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.executors import select_top_k
from kvpress_lab.executors.two_stage import first_stage_entries
from kvpress_lab.scorers.critical import CriticalScorer, projected_value_norms
from kvpress_lab.scorers.sink import SinkScorer
from kvpress_lab.scorers.snapkv_window import SnapKVWindowScorer


def _brute_force_norms(view) -> torch.Tensor:
    """``mean_g sum_i |sum_d v[t, d] W_o[i, (h G + g) D + d]|`` with explicit loops, float64."""
    values = view.values.double()
    weight = view.output_projection.double()
    batch, kv_heads, length, dim = values.shape
    groups = view.num_groups
    out = torch.zeros(batch, kv_heads, length, dtype=torch.float64)
    for b in range(batch):
        for h in range(kv_heads):
            for t in range(length):
                total = 0.0
                for g in range(groups):
                    q = h * groups + g
                    for i in range(weight.shape[0]):
                        total += abs(sum(float(values[b, h, t, d] * weight[i, q * dim + d]) for d in range(dim)))
                out[b, h, t] = total / groups
    return out


@pytest.mark.parametrize("base, base_kwargs", [("snapkv_window", {}), ("sink", {"num_sinks": 2}), ("knorm", {})])
def test_refined_score_is_base_plus_epsilon_times_the_projected_value_l1_norm(base, base_kwargs):
    view = make_view(batch=2, kv_heads=2, groups=2, length=9, window=2, head_dim=4, pad=[0, 3], seed=5)
    scorer = CriticalScorer(base=base, base_kwargs=base_kwargs, epsilon=0.01)
    first, refined = scorer.staged_scores(view)
    base_scores = Recipe(scorer=base, scorer_kwargs=base_kwargs, window=2).strategies.scorer.score(view).double()
    valid = view.valid[:, None, :].expand_as(refined)
    low = base_scores.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
    shifted = torch.where(low < 0, base_scores - low, base_scores)  # knorm (-||k||): each head starts at 0
    assert bool((low < 0).any()) == (base == "knorm")
    expected = (shifted + 0.01) * _brute_force_norms(view)
    torch.testing.assert_close(refined.double()[valid], expected[valid], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.double(), base_scores)
    assert torch.equal(scorer.score(view), refined)


def test_a_base_with_negative_scores_keeps_its_order():
    """knorm scores -||k||: multiplied as they are, a larger value norm made an entry rank *lower*."""
    view = make_view(batch=1, kv_heads=2, groups=2, length=9, window=2, head_dim=4, seed=3)
    keys = view.keys
    keys.copy_(keys / torch.linalg.vector_norm(keys, dim=-1, keepdim=True) * 2.0)  # every base score is -2
    first, refined = CriticalScorer(base="knorm").staged_scores(view)
    assert bool((first < 0).all())
    norms = projected_value_norms(view.values, view.output_projection, view.num_query_heads)
    assert torch.equal(refined.argsort(dim=-1, stable=True), norms.argsort(dim=-1, stable=True))  # more output, more kept
    view.values.fill_(1.0)  # and with equal value norms the refined order is the base order
    keys.mul_(torch.linspace(0.5, 1.5, 9)[None, None, :, None])
    first, refined = CriticalScorer(base="knorm").staged_scores(view)
    assert torch.equal(first.argsort(dim=-1, stable=True), refined.argsort(dim=-1, stable=True))


def test_a_reconstruction_base_is_refused_when_the_recipe_is_built():
    with pytest.raises(ValueError, match="base 'kvzip' is scored by a reconstruction pass.*pick a base"):
        Recipe(scorer="critical", scorer_kwargs={"base": "kvzip"})


def test_two_stage_selection_keeps_the_hand_computed_set():
    first = torch.tensor([[[0.9, 0.1, 0.8, 0.2, 0.3, 0.0, 0.5, 0.4]]])
    final = torch.tensor([[[0.0, 5.0, 0.1, 4.0, 3.0, 6.0, 0.0, 9.0]]])
    forced = torch.zeros(1, 1, 8, dtype=torch.bool)
    forced[..., -1] = True
    candidates = torch.ones(1, 8, dtype=torch.bool)
    expected = {4: [0, 1, 5, 7], 5: [0, 1, 3, 5, 7], 3: [1, 5, 7], 8: list(range(8))}  # keep 3: floor(1.5) = 1 = the forced one
    for keep, kept in expected.items():
        keep_t = torch.tensor([[keep]])
        stage_one = first_stage_entries(first, keep_t, forced, candidates, 0.5)
        selection = select_top_k(final, keep_t, stage_one, candidates)
        assert selection.indices[0, 0].tolist() == kept, keep
    # the two single-stage rules keep other sets: the case tells them apart
    assert select_top_k(final, torch.tensor([[4]]), forced, candidates).indices[0, 0].tolist() == [1, 3, 5, 7]
    assert select_top_k(first, torch.tensor([[4]]), forced, candidates).indices[0, 0].tolist() == [0, 2, 6, 7]


def test_stage_one_respects_padding_and_ratio_bounds():
    first = torch.tensor([[[9.0, 9.0, 1.0, 2.0, 0.0]]])
    candidates = torch.tensor([[False, False, True, True, True]])
    none = torch.zeros(1, 1, 5, dtype=torch.bool)
    won = first_stage_entries(first, torch.tensor([[2]]), none, candidates, 1.0)
    assert won[0, 0].tolist() == [False, False, True, True, False]  # padding never wins, whatever its score
    assert not first_stage_entries(first, torch.tensor([[3]]), none, candidates, 0.0).any()
    with pytest.raises(ValueError, match=r"first_stage_ratio must lie in \[0, 1\], got 1.5"):
        first_stage_entries(first, torch.tensor([[2]]), none, candidates, 1.5)


def _brute_force_two_stage(first, final, forced, valid, keep, ratio):
    """Kept positions of one head by the rule in words: forced, best by ``first`` up to floor(ratio k), rest by ``final``."""
    real = [t for t in range(len(valid)) if valid[t]]
    chosen = [t for t in real if forced[t]]
    by_first = sorted((t for t in real if t not in chosen), key=lambda t: (-first[t], t))
    chosen += by_first[: max(0, math.floor(ratio * keep) - len(chosen))]
    by_final = sorted((t for t in real if t not in chosen), key=lambda t: (-final[t], t))
    chosen += by_final[: keep - len(chosen)]
    return sorted(chosen)


@pytest.mark.parametrize("head_allocation", ["uniform", "adaptive"])
def test_engine_keeps_the_two_stage_set_on_a_padded_batch(monkeypatch, head_allocation):
    model = tiny_model("llama")
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (30, 21)])
    seen = {}
    original = CriticalScorer.staged_scores

    def recording(self, view):
        first, final = original(self, view)
        seen[view.layer_idx] = (first, final, view.valid)
        return first, final

    monkeypatch.setattr(CriticalScorer, "staged_scores", recording)
    recipe = Recipe(scorer="critical", budget=12, window=3, head_allocation=head_allocation)
    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=True)
    assert sorted(seen) == [0, 1, 2, 3]
    for idx, selection in session.selections.items():
        first, final, valid = seen[idx]
        for b in range(2):
            for h in range(2):
                kept = selection.indices[b, h][selection.valid[b, h]].tolist()
                forced = [t >= 30 - 3 for t in range(30)]
                want = _brute_force_two_stage(first[b, h].tolist(), final[b, h].tolist(), forced, valid[b].tolist(),
                                              len(kept), 0.5)
                assert kept == want, (idx, b, h)
                if head_allocation == "uniform":
                    assert len(kept) == 12


def test_critical_delegates_sinks_and_minimum_budget_to_its_base():
    view = make_view(batch=1, length=10, pad=[2])
    scorer = CriticalScorer(base="sink", base_kwargs={"num_sinks": 3})
    assert torch.equal(scorer.forced_keep(view), SinkScorer(num_sinks=3).forced_keep(view))
    assert scorer.minimum_budget(4) == 7 and CriticalScorer().minimum_budget(4) == 4
    assert CriticalScorer().forced_keep(view) is None
    assert CriticalScorer().chunked_prefill and CriticalScorer(base="h2o").chunked_prefill is False
    assert CriticalScorer()._base == SnapKVWindowScorer()


def test_the_composition_round_trips_through_json():
    recipe = Recipe(scorer="critical", scorer_kwargs={"base": "snapkv_window", "base_kwargs": {"kernel_size": 5, "pooling": "avg"},
                                                      "first_stage_ratio": 0.25})
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe and again.strategies.scorer == recipe.strategies.scorer
    assert again.strategies.scorer._base == SnapKVWindowScorer(kernel_size=5, pooling="avg")
    assert Recipe.preset("criticalkv").strategies.scorer.first_stage_ratio == 0.5


def test_bad_compositions_are_clear_errors():
    with pytest.raises(TypeError, match=r"CriticalScorer.base_kwargs: scorer 'snapkv_window' \(SnapKVWindowScorer\) has no parameter 'num_sinks'"):
        CriticalScorer(base_kwargs={"num_sinks": 4})
    with pytest.raises(Exception, match="Unknown scorer 'snapkv'"):
        CriticalScorer(base="snapkv")
    with pytest.raises(ValueError, match="cannot be 'critical' itself"):
        CriticalScorer(base="critical")
    with pytest.raises(ValueError, match=r"first_stage_ratio must be a number >= 0.0 and <= 1.0, got 2.0"):
        CriticalScorer(first_stage_ratio=2)
    view = make_view()
    bare = type(view)(view.layer_idx, view.keys, view.values, view.valid, view.window, view.scaling, view.num_query_heads,
                      view.query_fn)
    with pytest.raises(ValueError, match="needs the attention's output projection"):
        CriticalScorer().score(bare)


def test_the_adapter_exposes_each_layers_output_projection():
    model = tiny_model("phi3")
    adapter = ModelAdapter.for_model(model)
    assert adapter.output_projection(0) is model.model.layers[0].self_attn.o_proj.weight.detach() or torch.equal(
        adapter.output_projection(0), model.model.layers[0].self_attn.o_proj.weight)
