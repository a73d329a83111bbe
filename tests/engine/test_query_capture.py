"""H2O reads the queries the attention layer computed: same caches, same model outputs, nothing left installed."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import kvpress_lab.engine.families as families
import kvpress_lab.engine.query_capture as query_capture_module
from kvpress_lab import Recipe
from kvpress_lab.engine.query_capture import capture_queries
from helpers.tiny_models import left_pad, random_prompt, tiny_model


def _recomputed_queries(monkeypatch) -> None:
    """Turn the capture off: every scorer query is projected again from the layer's input."""
    monkeypatch.setattr(query_capture_module, "capture_queries", lambda modules, listener: contextlib.nullcontext())


def _prompt(model):
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (90, 71)])
    return ids, mask


def _same_caches(a, b) -> bool:
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) for x, y in zip(a.layers, b.layers))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("chunk_size", [None, 32])
def test_h2o_cache_is_identical_with_captured_queries(family, implementation, chunk_size, monkeypatch):
    model = tiny_model(family, implementation)
    ids, mask = _prompt(model)
    recipe = Recipe.preset("h2o", budget=20)
    captured = recipe.prefill(model, ids, mask, chunk_size=chunk_size)
    with monkeypatch.context() as patch:
        _recomputed_queries(patch)
        recomputed = recipe.prefill(model, ids, mask, chunk_size=chunk_size)
    assert [layer.keys.shape for layer in captured.layers] == [layer.keys.shape for layer in recomputed.layers]
    assert _same_caches(captured, recomputed)


def test_h2o_projects_no_query_again(monkeypatch):
    model = tiny_model("llama", "sdpa")
    ids, mask = _prompt(model)
    projections = []
    original = families.ModelAdapter.queries
    monkeypatch.setattr(families.ModelAdapter, "queries", staticmethod(lambda *a: projections.append(1) or original(*a)))
    Recipe.preset("h2o", budget=20).prefill(model, ids, mask)
    assert projections == []
    Recipe.preset("snapkv", budget=20).prefill(model, ids, mask)  # window scorers still project the W queries
    assert len(projections) == model.config.num_hidden_layers


def test_eager_attention_recomputes_the_queries(monkeypatch):
    """``eager`` is not in transformers' mapping (each family has its own default): nothing is wrapped."""
    model = tiny_model("llama", "eager")
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    with capture_queries({0: model.model.layers[0].self_attn}, lambda idx, query: None):
        assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before
    projections = []
    original = families.ModelAdapter.queries
    monkeypatch.setattr(families.ModelAdapter, "queries", staticmethod(lambda *a: projections.append(1) or original(*a)))
    Recipe.preset("h2o", budget=20, scorer_kwargs={"chunk_size": 32}).prefill(model, *_prompt(model))
    assert len(projections) == model.config.num_hidden_layers * 3  # 90 queries in blocks of 32


def test_model_outputs_unchanged_while_capturing(family):
    model = tiny_model(family, "sdpa")
    ids, mask = _prompt(model)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
        seen = []
        modules = {0: model.model.layers[0].self_attn}
        with capture_queries(modules, lambda idx, query: seen.append((idx, query.shape))):
            during = model(ids, attention_mask=mask).logits
    assert torch.equal(plain, during)
    assert seen == [(0, (2, model.config.num_attention_heads, ids.shape[1], model.model.layers[0].self_attn.head_dim))]


def test_listener_gets_the_kernels_query():
    model = tiny_model("qwen3", "eager")  # q_norm and rotary applied before the kernel
    ids, mask = _prompt(model)
    seen = {}
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True)
        model.config._attn_implementation = "sdpa"
        with capture_queries({1: model.model.layers[1].self_attn}, lambda idx, query: seen.setdefault(idx, query)):
            model(ids, attention_mask=mask)
    attention = model.model.layers[1].self_attn
    keys = model(ids, attention_mask=mask, use_cache=True).past_key_values.layers[1].keys
    keys = keys.repeat_interleave(attention.num_key_value_groups, dim=1)
    logits = seen[1] @ keys.transpose(-1, -2) * attention.scaling
    logits = logits.masked_fill(~_causal_padding_mask(mask), torch.finfo(logits.dtype).min)
    rows = mask.bool()[:, None, :, None]  # padded queries: eager's weights there are meaningless
    torch.testing.assert_close(logits.softmax(-1) * rows, out.attentions[1] * rows, rtol=1e-4, atol=1e-5)


def _causal_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return causal[None, None] & mask.bool()[:, None, None, :]


@pytest.mark.parametrize("raises", [False, True])
def test_registry_is_restored(raises):
    model = tiny_model("llama", "sdpa")
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with contextlib.suppress(RuntimeError):
        with capture_queries({0: model.model.layers[0].self_attn}, lambda idx, query: None):
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa
            with capture_queries({1: model.model.layers[1].self_attn}, lambda idx, query: None):
                pass  # a second, nested block: the wrapper stays until the outer one exits
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa
            if raises:
                raise RuntimeError("boom")
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before


def test_a_users_local_override_survives():
    model = tiny_model("llama", "sdpa")
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def mine(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = mine
    try:
        ids, mask = _prompt(model)
        Recipe.preset("h2o", budget=20).prefill(model, ids, mask)  # the wrapper calls the user's function
        assert len(calls) == model.config.num_hidden_layers
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is mine
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]


def test_one_listener_per_module():
    model = tiny_model("llama", "sdpa")
    modules = {0: model.model.layers[0].self_attn}
    with capture_queries(modules, lambda idx, query: None):
        with pytest.raises(RuntimeError, match=r"layers \[0\] are already being captured"):
            with capture_queries(modules, lambda idx, query: None):
                pass
    with capture_queries(modules, lambda idx, query: None):  # released on exit
        pass


def test_session_detach_releases_capture():
    model = tiny_model("llama", "sdpa")
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    ids, mask = _prompt(model)
    with pytest.raises(ValueError):
        with Recipe.preset("h2o", budget=20).apply(model):
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa
            raise ValueError("inside the block")
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa
    with Recipe.preset("snapkv", budget=20).apply(model):
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa  # only scorers that read every query install it
