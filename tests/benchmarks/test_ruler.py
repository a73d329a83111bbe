"""RULER generators: deterministic for a seed, answers really in the text, sizes near the target."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from kvpress_lab.benchmarks import ruler
from kvpress_lab.benchmarks.haystack import approx_token_count, filler_sentences


@pytest.mark.parametrize("task", sorted(ruler.TASKS))
def test_same_seed_same_sample_other_seed_other_sample(task):
    first = ruler.generate(task, 600, seed=3)
    assert ruler.generate(task, 600, seed=3) == first
    assert ruler.generate(task, 600, seed=4) != first


@pytest.mark.parametrize("task", sorted(ruler.TASKS))
@pytest.mark.parametrize("length", [200, 1500])
def test_every_answer_is_in_the_context_and_the_length_is_close(task, length):
    sample = ruler.generate(task, length, seed=1)
    assert sample.answers and all(answer in sample.context for answer in sample.answers)
    assert approx_token_count(sample.context) <= 1.1 * length + 10
    assert approx_token_count(sample.context) >= 0.6 * length
    assert sample.prompt == sample.context + sample.query
    assert sample.query.startswith("\n\nQuestion: ") and "\nAnswer: " in sample.query


def test_niah_multikey_hides_distractor_keys():
    sample = ruler.niah_multikey(800, seed=2, num_keys=4)
    assert len(re.findall(r"special magic numbers for [\w-]+ is: \d{7}\.", sample.context)) == 4
    key = re.search(r"number for ([\w-]+)\?", sample.question).group(1)
    assert f"for {key} is: {sample.answers[0]}." in sample.context


def test_variable_tracking_chain_resolves_to_the_value():
    sample = ruler.variable_tracking(800, seed=5, hops=4)
    value = re.search(r"value (\d+)\?", sample.question).group(1)
    assignments = dict(re.findall(r"VAR ([A-Z]{5}) = (?:VAR )?([A-Z]{5}|\d+)\.", sample.context))
    resolved = {name for name in assignments if _resolve(assignments, name) == value}
    assert resolved == set(sample.answers) and len(sample.answers) == 5


def _resolve(assignments, name):
    while name in assignments:
        name = assignments[name]
    return name


def test_common_words_answers_are_strictly_the_most_frequent():
    sample = ruler.common_words(1200, seed=7, top_k=5)
    counts = Counter(re.findall(r"\d+\. ([a-z]+)", sample.context))
    rare_max = max(count for word, count in counts.items() if word not in sample.answers)
    assert min(counts[word] for word in sample.answers) > rare_max


def test_generator_errors_name_the_value():
    with pytest.raises(ValueError, match="Unknown RULER task 'niah'"):
        ruler.generate("niah", 500)
    with pytest.raises(ValueError, match="length must be an int >= 32"):
        ruler.generate("niah_single", 10)


def test_filler_is_seeded_and_digit_free():
    assert filler_sentences(50, seed=9) == filler_sentences(50, seed=9) != filler_sentences(50, seed=10)
    assert not any(ch.isdigit() for sentence in filler_sentences(500, seed=0) for ch in sentence)
