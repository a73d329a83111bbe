"""Needle prompts: the needle sits at the requested depth and the prompt has the requested size."""

from __future__ import annotations

import pytest

from kvpress_lab.benchmarks.needle import QUESTION, build_needle_prompt, is_correct, needle_cells


def count_words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@pytest.mark.parametrize("length", [256, 1024, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_needle_depth_and_length(length, depth):
    prompt = build_needle_prompt(length, depth, count_words, seed=1)
    total = count_words(prompt.context + prompt.question)
    assert length - 25 <= total <= length  # within one filler sentence below the target, never above
    before = count_words(prompt.context.split(prompt.needle)[0])
    haystack = count_words(prompt.context) - count_words(prompt.needle)
    assert abs(before / haystack - depth) <= 20 / haystack  # at the closest sentence boundary
    assert prompt.question == QUESTION and prompt.context.count(prompt.needle) == 1


def test_needle_prompt_is_completion_style_and_seeded():
    prompt = build_needle_prompt(300, 0.5, count_words, seed=3)
    assert (prompt.context + prompt.question).endswith("Question: What is the secret passcode?\nAnswer: The secret passcode is")
    assert build_needle_prompt(300, 0.5, count_words, seed=3) == prompt
    assert build_needle_prompt(300, 0.6, count_words, seed=3).passcode != prompt.passcode
    assert len(prompt.passcode) == 5 and prompt.passcode.isdigit()
    assert sum(ch.isdigit() for ch in prompt.context) == 5  # the passcode is the only number


def test_with_a_real_bpe_style_counter_the_length_is_within_tolerance():
    from kvpress_lab.benchmarks.haystack import approx_token_count

    prompt = build_needle_prompt(2048, 0.5, approx_token_count, seed=0)
    assert 2048 - 40 <= approx_token_count(prompt.context + prompt.question) <= 2048 + 5


def test_correctness_and_grid():
    assert is_correct(" 48213.", "48213") and not is_correct(" 4821.", "48213")
    assert needle_cells([512, 1024], [0.0, 1.0]) == [(512, 0.0), (512, 1.0), (1024, 0.0), (1024, 1.0)]
    with pytest.raises(ValueError, match="depth must be a number in"):
        build_needle_prompt(512, 1.5, count_words)
    with pytest.raises(ValueError, match="length must be an int >= 64"):
        build_needle_prompt(10, 0.5, count_words)
    with pytest.raises(ValueError, match="at least one length"):
        needle_cells([], [0.5])
