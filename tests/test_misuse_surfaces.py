"""Misusing the surfaces added since the first misuse matrix: ask, the pipeline, compress_many, chunked and
decoding-time compression, quantized storage, threshold allocation, the critical and kvzip scorers,
cache_report, in-process plugins, lm-eval's recipe arguments, and copies of models and caches.

Every case is the *class* of input behind a silent or obscure result the matrix found: each test
asserts the exception type, a message naming the problem, and a clean model (no hook, no attribute,
no ``generate`` wrapper) or registry afterwards; where the fix is correct behaviour instead of an
error, the test checks the result against an independent run. The CLI and result-file cases are in
``tests/test_misuse_files.py``; threads in ``tests/test_concurrency.py``.
"""

from __future__ import annotations

import copy
import io
import json
import re
import subprocess
import sys

import pytest
import torch
from helpers.char_tokenizer import CharTokenizer
from helpers.clean_model import assert_clean, checked_llama, is_compressed  # noqa: F401 (fixture `model`)
from helpers.tiny_models import random_prompt, tiny_model
from transformers import pipeline
from transformers.cache_utils import StaticCache

import kvpress_lab.pipeline  # noqa: F401 - registers the "kvpress-lab" task
from kvpress_lab import Recipe, UnknownStrategyError, ask, cache_report, compress_many, hookimpl
from kvpress_lab.engine.model_hooks import disable_compressed_decoding
from kvpress_lab.errors import CacheReuseError, PluginError, UnsupportedCacheError

GENERATE = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
CONTEXT = "the quick brown fox jumps over the lazy dog " * 2
SNAPKV = Recipe.preset("snapkv", budget=16, window=4)


def _answer(model, *args, **kwargs) -> str:
    return ask(model, CharTokenizer(), CONTEXT, "who?", *args, max_new_tokens=4, **kwargs)[0].text


# -- a second kvpress_lab call inside `with recipe.apply(model)` in the same thread (silent 1) ------------


NESTED = {
    "compress_many": lambda m, ids: compress_many(m, ids, [None, SNAPKV]),
    "Recipe.prefill": lambda m, ids: SNAPKV.prefill(m, ids),
    "kvpress_lab.ask": lambda m, ids: ask(m, CharTokenizer(), CONTEXT, "who?", None, max_new_tokens=2),
    "`with recipe.apply(model)`": lambda m, ids: SNAPKV.apply(m).__enter__(),
}


@pytest.mark.parametrize("name", NESTED)
def test_a_nested_call_in_the_same_thread_is_refused_and_the_block_goes_on(model, name):
    """compress_many used to return the enclosing recipe's cache for every entry (the full reference too)."""
    ids = random_prompt(1, 64)
    with Recipe.preset("streamingllm", budget=16, window=4).apply(model):
        with pytest.raises(RuntimeError, match=re.escape(name) + " cannot run here: a kvpress_lab recipe is already "
                                               "applied to this model in this thread"):
            NESTED[name](model, ids)
        out = model.generate(ids, return_dict_in_generate=True, **GENERATE)
    assert out.cache.layers[0].kept_counts().tolist() == [[18, 18]]  # 16 kept + 2 generated: the block still compresses
    assert_clean(model)


def test_compress_many_outside_the_block_gives_each_recipe_its_cache(model):
    ids = random_prompt(1, 64)
    full, snap = compress_many(model, ids, [None, SNAPKV])
    assert [layer.get_seq_length() for layer in full.layers] == [64] * 4 and not is_compressed(full)
    assert snap.layers[0].kept_counts().tolist() == [[16, 16]]


# -- copies of models and caches, at any point (obscure 2, and the stale wrapper of silent 1) ----------------


def _save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


STATES = ("plain", "after Recipe.prefill", "after compress_many", "inside apply")


@pytest.mark.parametrize("how", [copy.deepcopy, _save_load], ids=["deepcopy", "torch.save"])
@pytest.mark.parametrize("state", STATES)
def test_a_model_copied_at_any_point_works_with_its_own_weights(model, state, how):
    ids, question = random_prompt(1, 40), random_prompt(1, 3, seed=1)
    full_ids = torch.cat([ids, question], dim=1)
    cache = None
    if state == "after Recipe.prefill":
        cache = SNAPKV.prefill(model, ids)
    elif state == "after compress_many":
        cache = compress_many(model, ids, [SNAPKV])[0]
    if state == "inside apply":
        with SNAPKV.apply(model):
            twin = how(model)
    else:
        twin, twin_cache = how((model, cache))
    assert "_kvpress_lab_session" not in vars(twin)
    if cache is not None:  # the copy decodes its copy of the compressed cache exactly as the original does
        want = model.generate(full_ids, cache=copy.deepcopy(cache), **GENERATE)
        assert torch.equal(twin.generate(full_ids, cache=twin_cache, **GENERATE), want)
    with torch.no_grad():
        twin.lm_head.weight.zero_()  # the copy's generate must run the copy's weights, not the original's
    assert not torch.equal(twin.generate(ids, **GENERATE), model.generate(ids, **GENERATE))
    with SNAPKV.apply(twin):  # a copy carries no session: a recipe applies to it
        assert is_compressed(twin.generate(ids, return_dict_in_generate=True, **GENERATE).cache)
    disable_compressed_decoding(twin)
    assert_clean(twin)


def test_a_model_copied_inside_a_block_is_not_compressed(model):
    ids = random_prompt(1, 40)
    with SNAPKV.apply(model):
        twin = copy.deepcopy(model)
        out = twin.generate(ids, return_dict_in_generate=True, **GENERATE)  # same thread, but another model
    assert not is_compressed(out.cache)
    disable_compressed_decoding(twin)
    assert_clean(twin)


@pytest.mark.parametrize("how", [copy.deepcopy, _save_load], ids=["deepcopy", "torch.save"])
@pytest.mark.parametrize("recipe", [SNAPKV, Recipe(budget=16, window=4, head_allocation="adaptive"),
                                    Recipe(budget=16, window=4, executor_kwargs={"kv_bits": 8})],
                         ids=["dense", "ragged", "int8"])
def test_a_compressed_cache_copied_or_saved_decodes_like_the_original(model, recipe, how):
    ids = random_prompt(1, 40)
    full_ids = torch.cat([ids, random_prompt(1, 3, seed=1)], dim=1)
    cache = recipe.prefill(model, ids)
    twin = how(cache)
    assert torch.equal(model.generate(full_ids, cache=twin, **GENERATE), model.generate(full_ids, cache=cache, **GENERATE))


# -- ask and the pipeline: arguments of every kind (silent 2 and 7, obscure 3, 4, 7) ---------------------------


def test_ask_from_the_package_is_the_function_after_importing_the_pipeline():
    code = "import kvpress_lab.pipeline\nfrom kvpress_lab import ask\nprint(callable(ask), type(ask).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "function"]


@pytest.mark.parametrize(("questions", "error", "fragment"), [
    (None, TypeError, "questions must be a string or a sequence of strings, got NoneType"),
    (123, TypeError, "questions must be a string or a sequence of strings, got int"),
    (b"who?", TypeError, "got bytes"),
    ({"who?": 1}, TypeError, "got dict"),
    (["who?", 3], TypeError, r"questions must be strings; got 1: int"),
    ([], ValueError, "questions must be one or more non-empty strings"),
    (["who?", ""], ValueError, "questions must be one or more non-empty strings"),
])
def test_ask_refuses_questions_that_are_not_strings(model, questions, error, fragment):
    with pytest.raises(error, match=fragment):
        ask(model, CharTokenizer(), CONTEXT, questions, SNAPKV)
    assert_clean(model)


@pytest.mark.parametrize(("context", "error"), [(None, TypeError), (3, TypeError), (["a"], TypeError), ("", ValueError)])
def test_ask_refuses_a_context_that_is_not_a_string(model, context, error):
    with pytest.raises(error, match="context must be a non-empty string"):
        ask(model, CharTokenizer(), context, "who?", SNAPKV)
    assert_clean(model)


def test_ask_takes_a_preset_name_or_a_dict_as_the_recipe(model):
    want = _answer(model, SNAPKV)
    assert _answer(model, "snapkv") == _answer(model, Recipe.preset("snapkv"))
    assert _answer(model, SNAPKV.to_dict()) == want
    with pytest.raises(UnknownStrategyError, match="Unknown preset 'snapkvv'. Did you mean 'snapkv'"):
        _answer(model, "snapkvv")
    for bad in (3, ["snapkv"], SNAPKV.strategies):
        with pytest.raises(TypeError, match="recipe must be a kvpress_lab.Recipe, a preset name"):
            _answer(model, bad)
    assert_clean(model)


@pytest.mark.parametrize(("chunk_size", "error"), [(0, ValueError), (-4, ValueError), (2.5, TypeError), (True, TypeError),
                                                   ("16", TypeError)])
@pytest.mark.parametrize("recipe", [None, SNAPKV], ids=["full", "snapkv"])
def test_ask_refuses_a_chunk_size_that_is_not_a_positive_integer(model, chunk_size, error, recipe):
    """With recipe=None a chunk size of 0 used to be accepted and ignored."""
    with pytest.raises(error, match="chunk_size must be an integer >= 1 or None"):
        _answer(model, recipe, chunk_size=chunk_size)
    assert_clean(model)


def _prefill_forwards(model, call) -> int:
    """How many forwards of more than one token ``call`` runs (the prefill's chunks)."""
    widths = []
    handle = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return sum(w > 1 for w in widths)


def test_the_full_cache_is_prefilled_in_chunks_when_asked(model):
    """ask(recipe=None, chunk_size=C) and the pipeline's prefill_chunk_size used to run in one pass."""
    pipe = pipeline("kvpress-lab", model=model, tokenizer=CharTokenizer(), max_new_tokens=4)
    one_pass = _answer(model, None)
    assert _prefill_forwards(model, lambda: _answer(model, None, chunk_size=16)) == 1 + -(-len(CONTEXT) // 16)  # + the question
    assert _prefill_forwards(model, lambda: pipe(context=CONTEXT, question="who?", prefill_chunk_size=16)) == 1 + 6
    assert _answer(model, None, chunk_size=16) == one_pass  # the same cache, up to float rounding
    assert_clean(model)


@pytest.mark.parametrize(("options", "error", "fragment"), [
    ({"num_return_sequences": 2, "do_sample": True}, ValueError, "num_return_sequences=2 would need that row repeated"),
    ({"num_beams": 3}, ValueError, "num_beams=3 would need that row repeated"),
    ({"attention_mask": torch.ones(1, 3)}, TypeError, "ask\\(\\) builds attention_mask itself"),
    ({"cache": None}, TypeError, "builds cache itself"),
    ({"past_key_values": None}, TypeError, "builds past_key_values itself"),
    ({"return_dict_in_generate": True}, TypeError, "builds return_dict_in_generate itself"),
    ({"prefill_chunk_size": 8}, TypeError, "use chunk_size= for a chunked prefill"),
])
def test_ask_refuses_generate_options_it_controls(model, options, error, fragment):
    with pytest.raises(error, match=fragment):
        ask(model, CharTokenizer(), CONTEXT, "who?", SNAPKV, **options)
    assert_clean(model)


def test_the_pipeline_takes_one_question_as_question_and_several_as_questions(model):
    pipe = pipeline("kvpress-lab", model=model, tokenizer=CharTokenizer(), recipe=SNAPKV, max_new_tokens=4)
    for value in (["who?", "when?"], ("who?",), 3):
        with pytest.raises(TypeError, match="question= takes one string.*for several questions use questions="):
            pipe(context=CONTEXT, question=value)
    with pytest.raises(TypeError, match="questions= takes a list of strings; for one question use question="):
        pipe(context=CONTEXT, questions="who?")
    both = pipe(context=CONTEXT, questions=["who?", "when?"])["answers"]
    assert both == [pipe(context=CONTEXT, question=q)["answer"] for q in ("who?", "when?")]
    assert pipe(context=CONTEXT, question="who?", recipe="snapkv")["answer"] == _answer(model, "snapkv")
    assert_clean(model)


def test_a_list_of_contexts_gives_the_same_results_whatever_the_batch_size(model):
    pipe = pipeline("kvpress-lab", model=model, tokenizer=CharTokenizer(), recipe=SNAPKV, max_new_tokens=4)
    contexts = [CONTEXT, CONTEXT[:50], CONTEXT[5:70]]
    one = [r["answer"] for r in pipe(contexts, question="who?")]
    assert [r["answer"] for r in pipe(contexts, question="who?", batch_size=2)] == one
    assert_clean(model)


# -- decoding-time compression outside `with` (silent 3) -------------------------------------------------------


DECODING = Recipe(budget=16, window=4, decode_budget=16, compress_every=2)


@pytest.mark.parametrize("prefill", ["Recipe.prefill", "compress_many"])
def test_a_cache_whose_recipe_compresses_decoding_is_refused_outside_the_block(model, prefill):
    ids = random_prompt(1, 64)
    cache = DECODING.prefill(model, ids) if prefill == "Recipe.prefill" else compress_many(model, ids, [DECODING])[0]
    full_ids = torch.cat([ids, random_prompt(1, 2, seed=1)], dim=1)
    with pytest.raises(UnsupportedCacheError, match="decode_budget=16 .* outside `with recipe.apply\\(model\\)`"):
        model.generate(full_ids, cache=copy.deepcopy(cache), **GENERATE)
    with pytest.raises(UnsupportedCacheError, match="decode_budget=16"), torch.no_grad():
        model(full_ids[:, 64:], cache=copy.deepcopy(cache), use_cache=True)  # a forward of its own, too
    with DECODING.apply(model):
        out = model.generate(full_ids, cache=copy.deepcopy(cache), max_new_tokens=20, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)
    assert max(max(row) for row in out.cache.layers[0].kept_counts().tolist()) <= 16 + 2  # the decode budget held
    plain = Recipe(budget=16, window=4).prefill(model, ids)  # no decode budget: decoding outside is fine
    model.generate(full_ids, cache=plain, **GENERATE)


# -- a budget an allocator ignores (silent 4) ---------------------------------------------------------------------


@pytest.mark.parametrize("sizing", [{"budget": 16}, {"budget": 128}, {"compression_ratio": 0.5}])
def test_a_budget_for_an_allocator_that_ignores_it_is_refused(sizing):
    setting = ", ".join(f"{k}={v!r}" for k, v in sizing.items())
    with pytest.raises(ValueError, match=f"allocator 'threshold' does not use a budget .*{setting} would be ignored"):
        Recipe(allocator="threshold", **sizing)
    with pytest.raises(ValueError, match="does not use a budget"):
        Recipe.preset("kvzip-threshold", **sizing)
    recipe = Recipe(allocator="threshold")
    assert recipe.budget is None and Recipe.from_json(recipe.to_json()) == recipe


def test_a_budget_sweep_runs_a_threshold_preset_once():
    from kvpress_lab.benchmarks.commands import recipe_entries
    from kvpress_lab.benchmarks.sweep import plan_cells

    cells = plan_cells(["snapkv", "kvzip-threshold"], [32, 64], ["s"])
    assert [(c.recipe, c.budget) for c in cells] == [("snapkv", 32), ("snapkv", 64), ("kvzip-threshold", None)]
    assert [(label, size.budget, size.ratio) for label, size in recipe_entries(["kvzip-threshold"], [32, 64], [0.5])] == [
        ("kvzip-threshold", None, None)]


# -- cache_report on caches it does not make (silent 6) -----------------------------------------------------------


def test_cache_report_of_a_static_cache_counts_filled_slots(model):
    cache = StaticCache(model.config, max_cache_len=128)
    with torch.no_grad():
        model(random_prompt(1, 69), cache=cache, use_cache=True)
    report = cache_report(cache)
    assert report.layers[0].kept == ((69, 69),) and report.layers[0].physical_length == 128
    assert "4 preallocated" in report.summary()


@pytest.mark.parametrize(("layers", "fragment"), [
    ([1, 2], "layer 0 of this Fake is a int, not a cache layer"),
    ([None], "layer 0 of this Fake is a NoneType"),
    (["keys"], "is a str, not a cache layer"),
    (5, "cache.layers to be a list of cache layers, got int"),
    ("ab", "got str"),
])
def test_cache_report_refuses_what_is_not_a_cache(layers, fragment):
    fake = type("Fake", (), {"layers": layers})()
    with pytest.raises(TypeError, match=fragment):
        cache_report(fake)


# -- chunked prefill and compressed caches with several sequences per prompt (obscure 4) --------------------------


def test_chunked_prefill_with_several_sequences_per_prompt(model):
    """Used to fail inside the engine: keep must be (B, Hkv)=(2, 2), got (1, 2)."""
    ids = random_prompt(1, 64)
    with SNAPKV.apply(model):
        torch.manual_seed(0)
        many = model.generate(ids, prefill_chunk_size=16, num_return_sequences=2, do_sample=True, max_new_tokens=5,
                              pad_token_id=0)
        torch.manual_seed(0)
        repeated = model.generate(ids.repeat(2, 1), prefill_chunk_size=16, do_sample=True, max_new_tokens=5, pad_token_id=0)
        beams = model.generate(ids, prefill_chunk_size=16, num_beams=2, max_new_tokens=5, pad_token_id=0)
    assert torch.equal(many, repeated) and beams.shape == (1, 69)
    assert_clean(model)


@pytest.mark.parametrize("options", [{"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}])
def test_a_compressed_cache_cannot_be_repeated_for_several_sequences(model, options):
    ids = random_prompt(1, 40)
    cache = SNAPKV.prefill(model, ids)
    name = next(iter(options))
    with pytest.raises(CacheReuseError, match=f"{name}=2.*repeats every prompt 2 times.*cannot be repeated"):
        model.generate(torch.cat([ids, random_prompt(1, 2)], dim=1), cache=cache, max_new_tokens=2, pad_token_id=0, **options)


# -- hyperparameters that compare equal to a valid value (obscure 6) ------------------------------------------------


@pytest.mark.parametrize("bits", [8.0, 4.0, True, "8", 3, 16])
def test_kv_bits_must_be_the_integer_8_or_4(bits):
    """kv_bits=8.0 used to be accepted, then fail on `<<` in the middle of generate."""
    with pytest.raises(ValueError, match=f"kv_bits must be None \\(no quantization\\), 8 or 4, got {bits!r}"):
        Recipe(executor_kwargs={"kv_bits": bits})


@pytest.mark.parametrize(("value", "choices"), [(8.0, (8, 4)), (True, (1, 0)), (1.0, (1, 2))])
def test_a_choice_of_another_type_that_compares_equal_is_refused(value, choices):
    from kvpress_lab.validation import check_choice

    with pytest.raises(ValueError, match=f"Owner.field must be one of .*, got {value!r} of type {type(value).__name__}"):
        check_choice("Owner", "field", value, choices)
    assert check_choice("Owner", "field", choices[0], choices) == choices[0]


# -- scorers wrapped or fed ids they cannot use (obscure 8, 11) ------------------------------------------------------


@pytest.mark.parametrize("base", ["kvzip"])
def test_critical_refuses_a_base_scored_after_the_prefill(base):
    with pytest.raises(ValueError, match=f"base {base!r} is scored by a reconstruction pass"):
        Recipe(scorer="critical", scorer_kwargs={"base": base})


@pytest.mark.parametrize("field", ["repeat_ids", "continue_ids", "suffix_ids"])
def test_kvzip_ids_beyond_the_vocabulary_are_refused(model, field):
    ids = {"repeat_ids": [5, 6], "continue_ids": [7], "suffix_ids": [8]}
    ids[field] = [5, 500]  # the tiny model's vocabulary has 97 ids
    recipe = Recipe.preset("kvzip", budget=16, window=2, scorer_kwargs=ids)
    with pytest.raises(ValueError, match=f"{field} holds token ids \\[500\\] beyond this model's vocabulary of 97"):
        with recipe.apply(model):
            model.generate(random_prompt(1, 40), **GENERATE)
    assert_clean(model)


# -- in-process plugins whose hook returns the wrong kind of collection (obscure 11) --------------------------------


@pytest.mark.parametrize("returned", [{"x": 1}, "scorer", b"scorer", 3])
def test_a_plugin_hook_returning_other_than_a_list_is_refused_and_leaves_the_registry(returned):
    from kvpress_lab import available, register_plugin

    class Plugin:
        @hookimpl
        def kvpress_lab_register_scorers(self):
            return returned

    before = available("scorer")
    with pytest.raises(PluginError, match=f"kvpress_lab_register_scorers\\(\\) must return a list, got {type(returned).__name__}"):
        register_plugin(Plugin(), name="test-bad-returns")
    assert available("scorer") == before


# -- lm-eval's recipe_json (obscure 11) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "error", "fragment"), [
    ("{not json", ValueError, "is not valid JSON"),
    ("[1, 2]", ValueError, "holds a JSON list, not an object of Recipe fields"),
    ('"snapkv"', ValueError, "holds a JSON str"),
    (None, ValueError, "is a folder"),
    ("missing", FileNotFoundError, "no such file"),
])
def test_a_bad_recipe_json_names_the_file(tmp_path, content, error, fragment):
    from kvpress_lab.integrations.lm_eval.recipe_args import build_recipe

    path = tmp_path / "recipe.json"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_text(content)
    with pytest.raises(error, match=f"recipe_json='{path}'.*{fragment}"):
        build_recipe(recipe_json=str(path))


def test_a_recipe_json_written_by_to_json_is_read_back(tmp_path):
    from kvpress_lab.integrations.lm_eval.recipe_args import build_recipe

    path = tmp_path / "recipe.json"
    path.write_text(SNAPKV.to_json())
    assert build_recipe(recipe_json=str(path)) == SNAPKV
    assert json.loads(path.read_text())["budget"] == 16
