"""The scorer contract: what a :class:`LayerView` built by the engine carries, on every family.

Pre-RoPE queries and keys, hidden states, positions, rotary tables of any position (future ones
included), attention weights of a query range: each is checked against what the model itself
computes, under sdpa and eager, with left padding.
"""

from __future__ import annotations

import pytest
import torch

from helpers.engine_plugins import VIEWS
from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.layer_view import LayerView
from kvpress_lab.rotary import apply_rotary, undo_rotary

W = 4


def _views(model, ids, mask=None, **forward):
    VIEWS.clear()
    with Recipe(scorer="test_views", budget=W, window=W, **forward).apply(model), torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True,
                    position_ids=None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0))
    assert VIEWS, "no layer was scored"
    return dict(VIEWS), out


def _padded_batch():
    return left_pad([random_prompt(1, n, seed=n)[0] for n in (23, 16)])


def test_prerope_keys_rotated_at_the_entry_positions_are_the_cached_keys(family, test_strategies):
    model = tiny_model(family)
    ids, mask = _padded_batch()
    views, _ = _views(model, ids, mask)
    for idx, view in views.items():
        cos, sin = view.rotary(view.positions)  # (B, T, R)
        rotated = apply_rotary(view.prerope_keys(), cos[:, None], sin[:, None])
        torch.testing.assert_close(rotated, view.keys, rtol=0, atol=0)  # bit-identical: the module's own arithmetic
        torch.testing.assert_close(undo_rotary(view.keys, cos[:, None], sin[:, None]), view.prerope_keys(),
                                   rtol=1e-5, atol=1e-5)


def test_prerope_queries_rotated_are_the_queries(family, test_strategies):
    model = tiny_model(family)
    ids, mask = _padded_batch()
    views, _ = _views(model, ids, mask)
    for view in views.values():
        cos, sin = view.rotary(view.positions[:, 5:11])
        rotated = apply_rotary(view.queries(5, 11, rotated=False), cos[:, None], sin[:, None])
        torch.testing.assert_close(rotated, view.queries(5, 11), rtol=0, atol=0)


def test_positions_follow_left_padding_and_the_next_position_continues_them(test_strategies):
    model = tiny_model("llama")
    ids, mask = _padded_batch()
    views, _ = _views(model, ids, mask)
    expected = (mask.cumsum(-1) - 1).clamp(min=0)
    for view in views.values():
        assert torch.equal(view.positions.cpu(), expected)
        assert view.next_positions.tolist() == [23, 16]
    views, _ = _views(model, ids[:1])  # no position ids given: the model counts from 0
    assert torch.equal(next(iter(views.values())).positions.cpu(), torch.arange(23)[None])


def test_rotary_tables_of_future_positions_are_the_models(family, test_strategies):
    model = tiny_model(family)
    views, _ = _views(model, random_prompt(1, 12))
    decoder = model.get_decoder()
    future = torch.arange(12, 40)[None]
    for idx, view in views.items():
        cos, sin = view.rotary(future)
        args = (view.hidden_states(), future) + ((model.config.layer_types[idx],) if family == "gemma3" else ())
        want_cos, want_sin = decoder.rotary_emb(*args)
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
        assert cos.shape == (1, 28, want_cos.shape[-1])


def test_the_view_is_the_same_under_sdpa_and_eager(family, test_strategies):
    ids, mask = _padded_batch()
    sdpa, _ = _views(tiny_model(family, "sdpa"), ids, mask)
    eager, _ = _views(tiny_model(family, "eager"), ids, mask)
    assert sdpa.keys() == eager.keys()
    real = mask.bool()  # padded entries' inputs depend on the kernel (their rows attend nothing); real ones must not
    for idx in sdpa:
        a, b = sdpa[idx], eager[idx]
        torch.testing.assert_close(a.prerope_keys().transpose(1, 2)[real], b.prerope_keys().transpose(1, 2)[real],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.queries(0, 23, rotated=False).transpose(1, 2)[real],
                                   b.queries(0, 23, rotated=False).transpose(1, 2)[real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.hidden_states()[real], b.hidden_states()[real], rtol=1e-5, atol=1e-5)
        assert torch.equal(a.positions, b.positions)


def test_attention_weights_of_a_query_range_are_the_models(family, test_strategies):
    model = tiny_model(family, "eager")
    ids, mask = _padded_batch()
    views, out = None, None
    VIEWS.clear()
    with Recipe(scorer="test_views", budget=W, window=W).apply(model), torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_attentions=True,
                    use_cache=True)
    for idx, view in VIEWS.items():
        ours = view.attention_weights(10, 17)  # (B, Hq, 7, T)
        torch.testing.assert_close(ours, out.attentions[idx][:, :, 10:17].float(), rtol=1e-4, atol=1e-5)


def test_hidden_states_are_the_attention_modules_input(test_strategies):
    model = tiny_model("qwen3")
    seen = {}

    def keep_input(module, args, kwargs, output):
        seen["hidden"] = kwargs["hidden_states"].clone()

    hook = model.model.layers[1].self_attn.register_forward_hook(keep_input, with_kwargs=True)
    try:
        views, _ = _views(model, random_prompt(1, 15))
    finally:
        hook.remove()
    assert torch.equal(views[1].hidden_states(), seen["hidden"])
    assert torch.equal(views[1].hidden_states(3, 9), seen["hidden"][:, 3:9])


def test_a_view_of_a_chunk_refuses_inputs_of_entries_kept_from_earlier_chunks():
    model = tiny_model("llama")
    adapter = ModelAdapter.for_model(model)
    keys = torch.zeros(1, 2, 12, 16)  # 8 entries kept from earlier chunks, then a chunk of 4
    hidden = torch.zeros(1, 4, model.config.hidden_size)
    cos, sin = model.model.rotary_emb(hidden, torch.arange(8, 12)[None])
    view = adapter.layer_view(0, hidden, (cos, sin), keys, keys, torch.ones(1, 12, dtype=torch.bool), W, queries_from=8)
    assert view.hidden_states(8, 12).shape == (1, 4, model.config.hidden_size)
    assert view.prerope_keys(8, 12).shape == (1, 2, 4, 16)
    with pytest.raises(ValueError, match="before 8 are gone"):
        view.prerope_keys(0, 12)
    with pytest.raises(ValueError, match="before 8 are gone"):
        view.queries(2, 12, rotated=False)
    with pytest.raises(ValueError, match="does not know its entries' positions"):
        view.next_positions


def test_a_hand_built_view_names_what_it_lacks():
    keys = torch.zeros(1, 2, 5, 4)
    view = LayerView(0, keys, keys, torch.ones(1, 5, dtype=torch.bool), window=2, scaling=0.5, num_query_heads=4,
                     query_fn=lambda a, b: torch.zeros(1, 4, b - a, 4))
    for call in (lambda: view.prerope_keys(), lambda: view.hidden_states(), lambda: view.queries(0, 2, rotated=False),
                 lambda: view.rotary(torch.arange(3)[None])):
        with pytest.raises(ValueError, match="carries no attention inputs"):
            call()
