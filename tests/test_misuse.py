"""Bad inputs to the engine: every misuse is a clear error (or a documented rule), nothing runs
uncompressed silently, and no case leaves a hook, an attribute or a wrapper on the model.

Each test ends with :func:`assert_clean`. The CLI's misuse cases live in ``tests/test_cli_misuse.py``.
"""

from __future__ import annotations

import copy
import gc
import threading
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache, DynamicLayer, StaticCache

import kvpress_lab.registry as registry_module
from helpers.clean_model import assert_clean, checked_llama, is_compressed  # noqa: F401 (fixture `model`)
from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe, hookimpl
from kvpress_lab.engine.model_hooks import disable_compressed_decoding
from kvpress_lab.errors import CacheReuseError, UnsupportedCacheError
from kvpress_lab.profile import ProfileError
from kvpress_lab.registry import Registry

GENERATE = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)


# -- 1. compression silently off -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"cache_implementation": "static"}, "cache_implementation='static'"),
        ({"cache_implementation": "offloaded"}, "cache_implementation='offloaded'"),
        ({"cache_implementation": "quantized"}, "cache_implementation='quantized'"),
        ({"use_cache": False}, "use_cache=False"),
    ],
)
def test_generate_options_that_would_skip_compression_are_refused(model, options, fragment):
    with pytest.raises(UnsupportedCacheError, match=fragment):
        with Recipe(budget=8, window=2).apply(model):
            model.generate(random_prompt(1, 30), **GENERATE, **options)
    assert_clean(model)


@pytest.mark.parametrize(
    ("recipe", "fragment"),
    [
        (Recipe(budget=8, window=2, scorer="lagkv"), "scorer 'lagkv' does not declare chunked_prefill"),
        (Recipe.preset("adaptive", budget=8, window=2), "allocator 'adaptive' has scope 'global'"),
    ],
)
def test_chunked_prefill_with_a_recipe_that_cannot_chunk_is_refused(model, recipe, fragment):
    """Before chunked compression existed, only the first chunk was compressed, silently."""
    with pytest.raises(UnsupportedCacheError, match=f"cannot compress during a chunked prefill: .*{fragment}"):
        with recipe.apply(model):
            model.generate(random_prompt(1, 30), prefill_chunk_size=8, **GENERATE)
    with pytest.raises(UnsupportedCacheError, match=fragment):
        recipe.prefill(model, random_prompt(1, 30), chunk_size=8)
    assert_clean(model)


def test_a_generation_config_asking_for_a_static_cache_is_refused_too(model):
    model.generation_config.cache_implementation = "static"
    with pytest.raises(UnsupportedCacheError, match="cache_implementation='static'"):
        with Recipe(budget=8, window=2).apply(model):
            model.generate(random_prompt(1, 30), **GENERATE)
    model.generation_config.cache_implementation = None


def test_a_static_cache_passed_in_is_refused_in_generate_and_in_forward(model):
    recipe = Recipe(budget=8, window=2)
    with pytest.raises(UnsupportedCacheError, match="Layer 0 of the StaticCache is a StaticLayer"):
        with recipe.apply(model):
            model.generate(random_prompt(1, 30), cache=StaticCache(model.config, max_cache_len=64), **GENERATE)
    with pytest.raises(UnsupportedCacheError, match="Layer 0 of the StaticCache is a StaticLayer"):
        with recipe.apply(model), torch.no_grad():
            model(random_prompt(1, 30), cache=StaticCache(model.config, max_cache_len=64), use_cache=True)


def test_a_forward_without_cache_is_refused(model):
    with pytest.raises(UnsupportedCacheError, match="without a KV cache"):
        with Recipe(budget=8, window=2).apply(model), torch.no_grad():
            model(random_prompt(1, 30), use_cache=False)


def test_an_offloaded_cache_is_refused(model):
    try:
        cache = DynamicCache(config=model.config, offloading=True)
    except Exception as error:  # noqa: BLE001 - offloading needs a device stream on some builds
        pytest.skip(f"DynamicCache(offloading=True) cannot be built here: {error}")
    with pytest.raises(UnsupportedCacheError, match="offloads its layers"):
        with Recipe(budget=8, window=2).apply(model), torch.no_grad():
            model(random_prompt(1, 30), cache=cache, use_cache=True)


def test_the_default_cache_is_still_compressed(model):
    with Recipe(budget=8, window=2).apply(model):
        out = model.generate(random_prompt(1, 30), return_dict_in_generate=True, cache_implementation="dynamic", **GENERATE)
    assert is_compressed(out.cache) and out.cache.layers[0].physical_length < 30


# -- 2. a session that is never entered ----------------------------------------------------------


def test_apply_without_with_warns_when_the_session_is_discarded(model):
    recipe = Recipe(budget=8, window=2)
    with pytest.warns(RuntimeWarning, match="discarded without being entered, so nothing was compressed"):
        recipe.apply(model)  # the mistake: the session is dropped at once
        gc.collect()


def test_entered_or_attached_sessions_do_not_warn(model, recwarn):
    session = Recipe(budget=8, window=2).apply(model)
    session.attach()
    session.detach()
    with Recipe(budget=8, window=2).apply(model):
        pass
    del session
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# -- 3. non-finite scores ------------------------------------------------------------------------


@dataclass(frozen=True)
class NonFiniteScorer:
    name: ClassVar[str] = "test_non_finite"
    value: str = "nan"

    def score(self, view):
        scores = torch.zeros(view.batch_size, view.num_kv_heads, view.seq_len)
        scores[..., 3] = float(self.value)
        return scores


class NonFinitePlugin:
    @hookimpl
    def kvpress_lab_register_scorers(self):
        return [NonFiniteScorer]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_scores_are_a_clear_error(model, monkeypatch, value):
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(extra_plugins=[("tests:nonfinite", NonFinitePlugin())]))
    recipe = Recipe(budget=8, window=2, scorer="test_non_finite", scorer_kwargs={"value": value})
    with pytest.raises(ValueError, match=r"Scorer 'test_non_finite' returned 2 non-finite scores \(NaN or inf\) at layer 0"):
        with recipe.apply(model), torch.no_grad():
            model(random_prompt(1, 30), use_cache=True)


def test_non_finite_scores_on_padding_are_ignored(model, monkeypatch):
    """Padding is never kept, so what a scorer says about it does not matter."""
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(extra_plugins=[("tests:nonfinite", NonFinitePlugin())]))
    ids, mask = left_pad([random_prompt(1, 30)[0], random_prompt(1, 20, seed=1)[0]])  # row 1: token 3 is padding
    recipe = Recipe(budget=8, window=2, scorer="test_non_finite", scorer_kwargs={"value": "nan"})
    with pytest.raises(ValueError, match="returned 2 non-finite scores"):  # row 0's token 3 (2 heads); row 1's is padding
        with recipe.apply(model), torch.no_grad():
            model(ids, attention_mask=mask, use_cache=True)


@pytest.mark.parametrize("name", Registry(autoload=False).names("executor"))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_executor_keeps_forced_entries_whatever_the_scores(name, bad):
    executor = Registry(autoload=False).get("executor", name).obj()
    scores = torch.tensor([[[bad, bad, 1.0, 2.0, bad, 0.0]]]).expand(1, 2, 6).contiguous()
    forced = torch.zeros(1, 2, 6, dtype=torch.bool)
    forced[..., -2:] = True  # the window: its scores are `bad` and 0.0
    selection = executor.select(scores, torch.tensor([[3, 3]]), forced, torch.ones(1, 6, dtype=torch.bool))
    kept = selection.indices[0, 0][selection.valid[0, 0]].tolist()
    assert {4, 5} <= set(kept)  # the window survives
    assert kept == ([0, 4, 5] if bad == float("inf") else [3, 4, 5])  # +inf ranks first, NaN lowest


# -- 7. a failing prefill leaves the model as it was ---------------------------------------------


@pytest.mark.parametrize(
    ("ids", "mask", "error", "fragment"),
    [
        (torch.zeros(1, 0, dtype=torch.long), None, ValueError, "both >= 1, got shape \\(1, 0\\)"),
        (torch.zeros(0, 5, dtype=torch.long), None, ValueError, "both >= 1, got shape \\(0, 5\\)"),
        (torch.ones(1, 5), None, TypeError, "integer token ids, got dtype torch.float32"),
        (torch.ones(1, 5, dtype=torch.bool), None, TypeError, "integer token ids, got dtype torch.bool"),
        ([[3, 4, 5]], None, TypeError, "must be a torch.Tensor of token ids .* got list"),
        (torch.tensor([3, 4, 5]), None, ValueError, "got shape \\(3,\\)"),
        (torch.full((1, 5), 3), torch.tensor([[1, 1, 1, 0, 0]]), ValueError, "Only left padding is supported"),
        (torch.full((1, 5), 3), torch.ones(1, 4, dtype=torch.long), ValueError, "must match input_ids \\(1, 5\\)"),
        (torch.full((1, 5), 3), torch.tensor([[1, 2, 1, 1, 1]]), ValueError, "0 \\(padding\\) and 1 \\(real token\\) only"),
        (torch.full((1, 5), 3), [[1, 1, 1, 1, 1]], TypeError, "attention_mask must be a torch.Tensor or None, got list"),
        (torch.full((1, 5), 3, device="meta"), None, ValueError, "input_ids are on meta but the model is on cpu"),
    ],
)
def test_bad_prefill_inputs_raise_before_touching_the_model(model, ids, mask, error, fragment):
    with pytest.raises(error, match=fragment):
        Recipe(budget=8, window=2).prefill(model, ids, mask)
    assert_clean(model)


def test_a_prefill_failing_inside_the_model_removes_its_hooks(model):
    with pytest.raises(IndexError):
        Recipe(budget=8, window=2).prefill(model, torch.full((1, 12), 10_000))  # token id beyond the vocabulary
    assert_clean(model)


# -- 8. compression_ratio on short prompts -------------------------------------------------------


def test_a_ratio_on_prompts_within_the_minimum_keeps_everything(model):
    prompt = random_prompt(1, 5)
    want = model.generate(prompt, **GENERATE)
    with pytest.warns(UserWarning, match="prompts shorter than 15 tokens"):
        with Recipe(compression_ratio=0.5, window=8).apply(model):
            got = model.generate(prompt, **GENERATE)  # shorter than the window: nothing to evict
            mixed = model.generate(random_prompt(1, 12), return_dict_in_generate=True, **GENERATE)
    assert torch.equal(got, want)
    assert mixed.cache.layers[0].kept_counts().tolist() == [[10, 10]]  # clamped to the minimum 8, + 2 generated


# -- 9. threads ----------------------------------------------------------------------------------


def test_sessions_of_many_threads_share_one_set_of_hooks(model, monkeypatch):
    """Six threads enter a session on one model at once: all enter (one per thread), the hooks are
    registered once, and the last to leave removes them. Registration is slowed down so that a
    check-then-register without a lock would register twice."""
    import time

    from kvpress_lab.engine import model_hooks

    install = model_hooks.ModelHooks._install

    def slow_install(self):
        time.sleep(0.01)
        install(self)

    monkeypatch.setattr(model_hooks.ModelHooks, "_install", slow_install)
    for _ in range(3):
        entered, left, counts, errors = threading.Barrier(6), threading.Barrier(6), [], []
        sessions = [Recipe(budget=8, window=2).apply(model) for _ in range(6)]

        def run(session):
            try:
                entered.wait()
                session.attach()
                left.wait()
                counts.append(sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()))
                session.detach()
            except Exception as error:  # noqa: BLE001 - collected
                errors.append(error)

        threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and len(counts) == 6
        assert set(counts) == {2 + 3 * len(sessions[0].adapter.compressible)}  # one set: decoder 2, each layer 3
        assert_clean(model)


def test_a_second_session_in_the_same_thread_is_refused(model):
    with Recipe(budget=8, window=2).apply(model):
        with pytest.raises(RuntimeError, match="already applied to this model in this thread"):
            with Recipe(budget=16, window=2).apply(model):
                pass
        out = model.generate(random_prompt(1, 30), return_dict_in_generate=True, **GENERATE)
    assert is_compressed(out.cache)  # the refused block left the enclosing one working
    assert_clean(model)


def test_another_threads_calls_are_not_compressed(model):
    prompt = random_prompt(1, 30)
    want = model.generate(prompt, return_dict_in_generate=True, output_scores=True, **GENERATE)
    inside, other = threading.Event(), {}

    def plain_generate():
        inside.wait()
        other["out"] = model.generate(prompt, return_dict_in_generate=True, output_scores=True, **GENERATE)

    thread = threading.Thread(target=plain_generate)
    thread.start()
    with Recipe(budget=8, window=2).apply(model):
        inside.set()
        thread.join()
        mine = model.generate(prompt, return_dict_in_generate=True, **GENERATE)
    assert not is_compressed(other["out"].cache)
    assert torch.equal(other["out"].sequences, want.sequences)
    assert all(torch.equal(a, b) for a, b in zip(other["out"].scores, want.scores))
    assert is_compressed(mine.cache)


# -- 10. reusing a prefill cache -----------------------------------------------------------------


def test_a_prefill_cache_reused_without_copy_is_refused(model):
    context, question = random_prompt(1, 30), random_prompt(1, 4, seed=1)
    cache = Recipe(budget=8, window=2).prefill(model, context)
    full = torch.cat([context, question], dim=1)
    model.generate(full, cache=copy.deepcopy(cache), **GENERATE)  # a copy per question: fine
    model.generate(full, cache=cache, **GENERATE)  # the first use of the cache itself: fine
    with pytest.raises(CacheReuseError, match="already extended past its prefill \\(30 tokens, now 36\\).*copy.deepcopy"):
        model.generate(torch.cat([context, random_prompt(1, 4, seed=2)], dim=1), cache=cache, **GENERATE)


def test_a_cache_continued_by_its_own_tokens_is_fine(model):
    """Multi-turn: the next prompt starts with every token the cache consumed."""
    context = random_prompt(1, 30)
    cache = Recipe(budget=8, window=2).prefill(model, context)
    first = model.generate(torch.cat([context, random_prompt(1, 4, seed=1)], dim=1), cache=cache, **GENERATE)
    model.generate(torch.cat([first, random_prompt(1, 3, seed=2)], dim=1), cache=cache, **GENERATE)


def test_a_cache_of_another_prompt_batch_or_model_is_refused(model):
    cache = Recipe(budget=8, window=2).prefill(model, random_prompt(1, 30))
    other = torch.cat([random_prompt(1, 30, seed=5), random_prompt(1, 4)], dim=1)
    with pytest.raises(CacheReuseError, match="its 30 prefill tokens are not the start of input_ids"):
        model.generate(other, cache=copy.deepcopy(cache), **GENERATE)
    with pytest.raises(CacheReuseError, match="holds 1 rows but input_ids has batch size 2"):
        model.generate(other.repeat(2, 1), cache=copy.deepcopy(cache), **GENERATE)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)).eval()
    from kvpress_lab.engine.model_hooks import enable_compressed_decoding

    enable_compressed_decoding(wider)
    try:
        with pytest.raises(CacheReuseError, match="Layer 0 of this compressed cache has 2 KV heads but the model has 4"):
            wider.generate(other, cache=copy.deepcopy(cache), **GENERATE)
    finally:
        disable_compressed_decoding(wider)
    assert_clean(wider)


# -- 12. a learned profile for another depth -----------------------------------------------------


def test_a_learned_profile_for_another_depth_fails_at_apply(model):
    recipe = Recipe.preset("learned", budget=16)  # the shipped profile has 30 layers; the tiny model 4
    with pytest.raises(ProfileError, match="calibrated on .* with 30 full-attention layers, but this model has 4"):
        recipe.apply(model)
    assert_clean(model)


def test_plain_layers_left_uncompressed_are_not_mistaken_for_bad_caches(model):
    """Budget >= T keeps DynamicLayers in place; decoding on them is the identity, not an error."""
    with Recipe(budget=64, window=2).apply(model):
        out = model.generate(random_prompt(1, 30), return_dict_in_generate=True, **GENERATE)
    assert all(type(layer) is DynamicLayer for layer in out.cache.layers)
