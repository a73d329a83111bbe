"""kvpress_lab.ask (kvpress_lab/answers.py): one compressed prefill, one private cache copy per question (embedded model)."""

from __future__ import annotations

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.answers import ask, split_prompt
from kvpress_lab.models import load_model

CONTEXT = " ".join(["The grass is green and the sky is blue."] * 12) + " The secret password is tangerine. " + " ".join(
    ["The sun is yellow and the sea is deep."] * 12)


@pytest.fixture(scope="module")
def embedded():
    return load_model("smollm2-135m-instruct")


def test_every_question_shares_the_context_prefix(embedded):
    _, tokenizer = embedded
    prefix_a, suffix_a = split_prompt(tokenizer, CONTEXT, "Who?")
    prefix_b, suffix_b = split_prompt(tokenizer, CONTEXT, "What is the password?")
    assert prefix_a == prefix_b and prefix_a.endswith(CONTEXT) and prefix_a.startswith("<|im_start|>system")
    assert suffix_a.startswith("\n\nWho?<|im_end|>") and suffix_a.endswith("<|im_start|>assistant\n")
    assert split_prompt(tokenizer, CONTEXT, "Who?", chat_template=False) == (CONTEXT, "\n\nWho?")


def test_full_cache_answers_equal_plain_generation(embedded):
    model, tokenizer = embedded
    answers = ask(model, tokenizer, CONTEXT, ["What is the secret password?"], None, max_new_tokens=6)
    prefix, suffix = split_prompt(tokenizer, CONTEXT, "What is the secret password?")
    ids = torch.cat([tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"],
                     tokenizer(suffix, add_special_tokens=False, return_tensors="pt")["input_ids"]], dim=1)
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    assert answers[0].text == tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert answers[0].context_tokens + answers[0].question_tokens == ids.shape[1]


def test_questions_never_see_each_other(embedded):
    model, tokenizer = embedded
    recipe = Recipe.preset("snapkv", budget=48)
    both = ask(model, tokenizer, CONTEXT, ["What is the secret password?", "What colour is the sky?"], recipe, max_new_tokens=5)
    alone = ask(model, tokenizer, CONTEXT, "What colour is the sky?", recipe, max_new_tokens=5)
    assert [a.question for a in both] == ["What is the secret password?", "What colour is the sky?"]
    assert both[1].text == alone[0].text  # the first answer left no trace in the second's cache
    assert both[0].prefill_seconds == both[1].prefill_seconds  # one shared prefill
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, f"hook left on {name}"


def test_bad_arguments_are_clear_errors(embedded):
    model, tokenizer = embedded
    with pytest.raises(ValueError, match="context must be a non-empty string"):
        ask(model, tokenizer, "", "Who?")
    with pytest.raises(ValueError, match="questions must be one or more non-empty strings"):
        ask(model, tokenizer, CONTEXT, [])
