"""KVzip: reconstruction scores against a brute-force restatement from the model's own eager attention."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.kvzip_prompt import TINY_PROMPT
from helpers.tiny_models import left_pad, random_prompt, tiny_model

from kvpress_lab import Recipe
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.post_prefill import reconstruction_scores
from kvpress_lab.engine.prefill import padded_positions
from kvpress_lab.errors import UnsupportedCacheError
from kvpress_lab.scorers.kvzip import KVzipScorer, RepeatPrompt

SCORER = KVzipScorer(num_sinks=2, chunk_size=8, prev_postfix_size=3, **TINY_PROMPT)


def _brute_force(model, ids: torch.Tensor, scorer: KVzipScorer) -> dict[int, torch.Tensor]:
    """KVzip's score restated on one unpadded row from eager attention probabilities over the full cache.

    For every chunk: build ``instruction + suffix + chunk`` by hand, run it on a copy of the prefill
    cache with ``output_attentions``, keep the probabilities over {first min(num_sinks, start) entries,
    the chunk, the new tokens}, renormalise them to sum 1 (KVzip's softmax over exactly those keys),
    take the max over queries and over the query heads of each KV group.
    """
    n = ids.shape[1]
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    config = model.config
    groups = config.num_attention_heads // config.num_key_value_heads
    out: dict[int, torch.Tensor] = {}
    context = ids[0].tolist()
    for start in range(0, n, scorer.chunk_size):
        stop = min(start + scorer.chunk_size, n)
        if start == 0:
            instruction = list(TINY_PROMPT["repeat_ids"])
        else:
            instruction = list(TINY_PROMPT["continue_ids"]) + context[max(0, start - scorer.prev_postfix_size):start]
        repeat = torch.tensor([instruction + list(TINY_PROMPT["suffix_ids"]) + context[start:stop]])
        q = repeat.shape[1]
        with torch.no_grad():
            result = model(repeat, cache=copy.deepcopy(cache), use_cache=True, output_attentions=True,
                           position_ids=torch.arange(n, n + q)[None])
        sink = min(scorer.num_sinks, start)
        subset = list(range(sink)) + list(range(start, stop)) + list(range(n, n + q))
        for layer, probs in enumerate(result.attentions):  # (1, Hq, Q, n + Q)
            kept = probs[0][..., subset]
            kept = kept / kept.sum(dim=-1, keepdim=True)
            chunk = kept[..., sink : sink + stop - start].amax(dim=1)  # (Hq, chunk): max over queries
            per_kv = chunk.reshape(config.num_key_value_heads, groups, -1).amax(dim=1)  # (Hkv, chunk)
            out.setdefault(layer, torch.zeros(config.num_key_value_heads, n))[:, start:stop] = per_kv
    for scores in out.values():
        scores[:, : scorer.num_sinks] = 1.0
    return out


def _engine_scores(model, ids, mask, scorer):
    positions = None if mask is None else padded_positions(mask)  # each row's real tokens at 0 .. n-1
    with torch.no_grad():
        cache = model(ids, attention_mask=mask, position_ids=positions, use_cache=True).cache
    valid = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    adapter = ModelAdapter.for_model(model)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    scores = reconstruction_scores(model, adapter, scorer, cache, ids, valid, positions)
    for (keys, values), layer in zip(before, cache.layers):  # the prefill cache is left untouched
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    return scores


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_scores_match_brute_force_restatement(family):
    model = tiny_model(family, "eager")
    ids = random_prompt(1, 23, seed=3)  # three chunks of 8, 8, 7: both instructions and the postfix
    want = _brute_force(model, ids, SCORER)
    got = _engine_scores(model, ids, None, SCORER)
    assert sorted(got) == sorted(want)
    for layer in want:
        torch.testing.assert_close(got[layer][0], want[layer], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_scores_fused_into_the_attention_match_the_restatement(family):
    """Under sdpa the repeat forward's attention computes the scores itself (one softmax); same scores as eager's."""
    ids = random_prompt(1, 23, seed=3)
    want = _brute_force(tiny_model(family, "eager"), ids, SCORER)
    model = tiny_model(family, "sdpa")
    recomputed = []
    original = KVzipScorer.reconstruction_scores
    try:  # the reference path must not run: every layer is scored inside its attention
        KVzipScorer.reconstruction_scores = lambda self, *a, **k: recomputed.append(1) or original(self, *a, **k)
        got = _engine_scores(model, ids, None, SCORER)
    finally:
        KVzipScorer.reconstruction_scores = original
    assert not recomputed
    for layer in want:
        torch.testing.assert_close(got[layer][0], want[layer], rtol=1e-4, atol=1e-6)


def test_left_padded_rows_score_like_each_row_alone():
    model = tiny_model("llama")
    rows = [random_prompt(1, n, seed=n)[0] for n in (23, 11, 17)]
    ids, mask = left_pad(rows)
    batched = _engine_scores(model, ids, mask, SCORER)
    for b, row in enumerate(rows):
        alone = _engine_scores(model, row[None], None, SCORER)
        pad = ids.shape[1] - row.shape[0]
        for layer in alone:
            torch.testing.assert_close(batched[layer][b, :, pad:], alone[layer][0], rtol=1e-4, atol=1e-5)
            assert bool((batched[layer][b, :, :pad] == 0).all())


def test_engine_keeps_the_top_scores_plus_sinks_and_window():
    model = tiny_model("llama", "eager")
    ids = random_prompt(1, 23, seed=3)
    want = _brute_force(model, ids, SCORER)
    budget, window = 9, 2
    recipe = Recipe(scorer="kvzip", budget=budget, window=window, scorer_kwargs=dict(SCORER.__dict__))
    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            model(ids, use_cache=True)
    for layer, scores in want.items():
        for head in range(scores.shape[0]):
            forced = set(range(SCORER.num_sinks)) | set(range(23 - window, 23))
            free = sorted((i for i in range(23) if i not in forced), key=lambda i: (-float(scores[head, i]), i))
            expected = sorted(forced | set(free[: budget - len(forced)]))
            assert session.selections[layer].indices[0, head].tolist() == expected


def test_repeat_tokens_never_reach_the_cache_and_full_budget_is_identity(family):
    model = tiny_model(family)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (29, 17, 23)])
    kwargs = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    base = model.generate(ids, attention_mask=mask, **kwargs)
    full = {"kvzip": {"budget": ids.shape[1]},  # full budget; a threshold below every score keeps everything
            "kvzip-threshold": {"allocator_kwargs": {"threshold": -1.0}}}
    for preset, override in full.items():
        with Recipe.preset(preset, scorer_kwargs=TINY_PROMPT, **override).apply(model):
            out = model.generate(ids, attention_mask=mask, **kwargs)
        assert torch.equal(out.sequences, base.sequences), preset
        assert all(torch.equal(a, b) for a, b in zip(out.scores, base.scores)), preset
        assert all(layer.get_seq_length() == ids.shape[1] + 4 for layer in out.cache.layers)


def test_prompt_from_a_tokenizer_follows_the_reference():
    class Tokenizer:  # encodes characters; a chat template splits around the user message
        chat_template = "x"

        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def apply_chat_template(self, messages, add_generation_prompt, tokenize, enable_thinking):
            return "<u>" + messages[0]["content"] + "</u><a>"

    prompt = RepeatPrompt.from_tokenizer(Tokenizer())
    assert prompt.repeat == tuple(ord(c) for c in "\n\nRepeat the previous context exactly.")
    assert prompt.continue_ == tuple(ord(c) for c in "\n\nRepeat the part of the previous context exactly, starting with")
    assert prompt.suffix == tuple(ord(c) for c in "</u><a>")
    Tokenizer.chat_template = None
    assert RepeatPrompt.from_tokenizer(Tokenizer()).suffix == (ord("\n"),)


def test_chunks_follow_the_reference_layout():
    prompt = RepeatPrompt((1, 2), (3,), (9,))
    context = torch.arange(100, 111)
    chunks = KVzipScorer(chunk_size=4, prev_postfix_size=2).chunks(context, prompt)
    assert [(a, b) for a, b, _ in chunks] == [(0, 4), (4, 8), (8, 11)]
    assert chunks[0][2].tolist() == [1, 2, 9, 100, 101, 102, 103]
    assert chunks[1][2].tolist() == [3, 102, 103, 9, 104, 105, 106, 107]
    assert chunks[2][2].tolist() == [3, 106, 107, 9, 108, 109, 110]


def test_what_cannot_work_is_refused_clearly():
    model = tiny_model("llama")
    ids = random_prompt(1, 30)
    recipe = Recipe(scorer="kvzip", budget=12, window=2, scorer_kwargs=TINY_PROMPT)
    with pytest.raises(UnsupportedCacheError, match="chunked_prefill"):
        recipe.prefill(model, ids, chunk_size=8)
    with pytest.raises(ValueError, match="decode_budget does not combine with scorer 'kvzip'"):
        Recipe(scorer="kvzip", budget=12, window=2, decode_budget=16)
    from kvpress_lab.engine.shared_prefill import compress_many

    with pytest.raises(UnsupportedCacheError, match="compress_many"):
        compress_many(model, ids, [recipe])
    with pytest.raises(UnsupportedCacheError, match="inputs_embeds"):
        with recipe.apply(model), torch.no_grad():
            model(inputs_embeds=model.get_input_embeddings()(ids), use_cache=True)
    with pytest.raises(ValueError, match="no tokenizer could be loaded"):
        with Recipe(scorer="kvzip", budget=12, window=2).apply(model), torch.no_grad():
            model(ids, use_cache=True)
    with pytest.raises(ValueError, match="together"):
        KVzipScorer(repeat_ids=[1])
    with pytest.raises(TypeError, match="list of token ids"):
        KVzipScorer(repeat_ids="abc", continue_ids=[1], suffix_ids=[2])
    with pytest.raises(TypeError, match="reconstruction pass"):
        SCORER.score(None)
