"""The ``"kvpress-lab"`` transformers pipeline: ask() behind transformers' custom-pipeline API."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.char_tokenizer import CharTokenizer
from helpers.tiny_models import tiny_model
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import kvpress_lab.pipeline
from kvpress_lab import Recipe
from kvpress_lab.answers import ask
from kvpress_lab.pipeline import KVPressLabPipeline

TINY_CONTEXT = "the quick brown fox jumps over the lazy dog " * 3
RECIPE = Recipe(budget=24, window=4)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", layers=2), CharTokenizer()


@pytest.fixture(scope="module")
def pipe(tiny):
    model, tokenizer = tiny
    return pipeline("kvpress-lab", model=model, tokenizer=tokenizer, recipe=RECIPE, max_new_tokens=4)


def _texts(answers):
    return [a.text for a in answers]


def test_the_task_is_registered_with_our_class(pipe):
    assert isinstance(pipe, KVPressLabPipeline)
    assert "kvpress-lab" in PIPELINE_REGISTRY.get_supported_tasks()
    kvpress_lab.pipeline.register_pipeline()  # again: nothing changes
    assert PIPELINE_REGISTRY.supported_tasks["kvpress-lab"]["impl"] is KVPressLabPipeline


def test_one_question_is_ask(pipe, tiny):
    model, tokenizer = tiny
    result = pipe(context=TINY_CONTEXT, question="what?")
    (expected,) = ask(model, tokenizer, TINY_CONTEXT, "what?", RECIPE, max_new_tokens=4)
    assert result["answer"] == expected.text
    assert result["stats"]["new_tokens"] == expected.new_tokens == 4
    assert result["stats"]["context_tokens"] == len(TINY_CONTEXT) and result["stats"]["question"] == "what?"
    assert pipe(TINY_CONTEXT, question="what?")["answer"] == expected.text  # the context positionally


def test_many_questions_share_one_prefill(pipe, tiny):
    model, tokenizer = tiny
    questions = ["what?", "who is it?", "where?"]
    result = pipe(context=TINY_CONTEXT, questions=questions, max_new_tokens=3)
    assert result["answers"] == _texts(ask(model, tokenizer, TINY_CONTEXT, questions, RECIPE, max_new_tokens=3))
    assert [s["question"] for s in result["stats"]] == questions
    assert len({s["prefill_seconds"] for s in result["stats"]}) == 1  # one prefill for every question


def test_call_options_override_the_pipeline_defaults(pipe, tiny):
    model, tokenizer = tiny
    full = pipe(context=TINY_CONTEXT, question="what?", recipe=None, max_new_tokens=2)
    assert full["answer"] == ask(model, tokenizer, TINY_CONTEXT, "what?", None, max_new_tokens=2)[0].text
    assert full["stats"]["new_tokens"] == 2
    chunked = pipe(context=TINY_CONTEXT, question="what?", prefill_chunk_size=16)
    assert chunked["answer"] == ask(model, tokenizer, TINY_CONTEXT, "what?", RECIPE, chunk_size=16, max_new_tokens=4)[0].text


def test_a_list_of_contexts_gives_a_list_of_results(pipe):
    results = pipe([TINY_CONTEXT, TINY_CONTEXT[:60]], question="what?")
    assert [r["stats"]["context_tokens"] for r in results] == [len(TINY_CONTEXT), 60]


@pytest.mark.parametrize("call, error, message", [
    (lambda p: p(context=TINY_CONTEXT), ValueError, "needs question= or questions="),
    (lambda p: p(context=TINY_CONTEXT, question="a", questions=["b"]), ValueError, "not both"),
    (lambda p: p(context=TINY_CONTEXT, questions="a"), TypeError, "for one question use question="),
    (lambda p: p(TINY_CONTEXT, context=TINY_CONTEXT, question="a"), TypeError, "context is given twice"),
    (lambda p: p(question="a"), TypeError, "needs a context"),
    (lambda p: p(context=3, question="a"), TypeError, "context must be a string"),
])
def test_misuse_is_a_clear_error(pipe, call, error, message):
    with pytest.raises(error, match=message):
        call(pipe)


def test_importing_kvpress_lab_does_not_import_transformers_pipelines():
    code = "import sys, kvpress_lab; print('transformers.pipelines' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------
# Smoke test on the embedded model (as tests/test_ask.py)
# ---------------------------------------------------------------------------------------------

CONTEXT = " ".join(["The grass is green and the sky is blue."] * 12) + " The secret password is tangerine. " + " ".join(
    ["The sun is yellow and the sea is deep."] * 12)


def test_embedded_model_pipeline_answers_as_ask():
    from kvpress_lab.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    recipe = Recipe.preset("snapkv", budget=48)
    pipe = pipeline("kvpress-lab", model=model, tokenizer=tokenizer, recipe=recipe)
    questions = ["What is the secret password?", "What colour is the sky?"]
    result = pipe(context=CONTEXT, questions=questions, max_new_tokens=5)
    expected = ask(model, tokenizer, CONTEXT, questions, recipe, max_new_tokens=5)
    assert result["answers"] == _texts(expected)
    assert [s["context_tokens"] for s in result["stats"]] == [a.context_tokens for a in expected]
    # the chat template is on by default (the tokenizer has one); the switch turns it off, as in ask()
    plain = pipe(context=CONTEXT, question=questions[0], chat_template=False, max_new_tokens=5)
    (plain_expected,) = ask(model, tokenizer, CONTEXT, questions[0], recipe, chat_template=False, max_new_tokens=5)
    assert plain["answer"] == plain_expected.text
    assert plain["stats"]["context_tokens"] == plain_expected.context_tokens < expected[0].context_tokens


def test_a_decode_budget_bounds_every_answers_cache(tiny):
    """ask() (and so the pipeline) compresses each answer's generation when the recipe has a decode budget."""
    from kvpress_lab.benchmarks.chunked_prefill import layer_entries

    model, tokenizer = tiny
    held = []

    def probe(module, args, kwargs, output):
        held.append(layer_entries(kwargs["cache"].layers[module.layer_idx]))

    recipe = Recipe(budget=24, window=4, decode_budget=16, compress_every=4)
    handle = model.get_decoder().layers[0].self_attn.register_forward_hook(probe, with_kwargs=True)
    try:
        pipeline("kvpress-lab", model=model, tokenizer=tokenizer, recipe=recipe)(
            context=TINY_CONTEXT, questions=["what?", "who?"], max_new_tokens=30, min_new_tokens=30)
    finally:
        handle.remove()
    decoding = held[1:]  # held[0]: the context's prefill
    assert len(decoding) == 2 * 30 and max(decoding) <= 24 + len("\n\nwhat?")  # the question joins the 24 kept
    assert max(decoding[10:30] + decoding[40:]) <= 16 + 4  # cut back to the decode budget as generation goes on


def test_load_pipeline_takes_a_model_name_through_load_model(tiny, monkeypatch):
    """``load_pipeline(model="smollm2-135m-instruct")``: the name goes to load_model, which returns model and tokenizer."""
    import kvpress_lab.models

    names = []

    def fake_load_model(name):
        names.append(name)
        return tiny

    monkeypatch.setattr(kvpress_lab.models, "load_model", fake_load_model)
    pipe = kvpress_lab.pipeline.load_pipeline(model="smollm2-135m-instruct", recipe=RECIPE, max_new_tokens=4)
    assert names == ["smollm2-135m-instruct"]
    assert isinstance(pipe, KVPressLabPipeline) and pipe.model is tiny[0] and pipe.tokenizer is tiny[1]
    (expected,) = ask(*tiny, TINY_CONTEXT, "what?", RECIPE, max_new_tokens=4)
    assert pipe(context=TINY_CONTEXT, question="what?")["answer"] == expected.text


def test_load_pipeline_passes_a_model_object_through(tiny):
    model, tokenizer = tiny
    pipe = kvpress_lab.pipeline.load_pipeline(model=model, tokenizer=tokenizer, recipe=RECIPE)
    assert pipe.model is model and pipe.tokenizer is tokenizer
