"""RULER-style synthetic tasks, generated locally from a seed, with exact-match scoring.

Based on https://arxiv.org/abs/2404.06654 (RULER: What's the Real Context Size of Your
Long-Context Language Models?). Each generator returns a :class:`RulerSample`: a context of
about ``length`` tokens (of ``count_tokens``), a question, an answer prefix for completion-style
prompting, and the reference strings that must appear in the model's output.

Scoring is RULER's ``string_match_all``: the share of references found (case-insensitive) in
the prediction, so a single-answer task scores 0 or 1.

Examples
--------
>>> sample = niah_single(200, seed=1)
>>> sample.answers[0] in sample.context
True
>>> niah_single(200, seed=1) == sample
True
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvpress_lab.benchmarks.haystack import approx_token_count, fill_to_tokens

__all__ = [
    "RulerSample",
    "TASKS",
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "variable_tracking",
    "common_words",
    "string_match_all",
    "exact_match",
    "generate",
    "MIN_LENGTH",
]

#: Fewest context tokens :func:`generate` accepts.
MIN_LENGTH = 32

TokenCounter = Callable[[str], int]

_KEYS = (
    "amber-falcon", "silent-river", "copper-lantern", "hidden-garden", "frozen-harbor", "crimson-valley",
    "golden-meadow", "iron-compass", "velvet-shadow", "marble-tower", "northern-orchard", "paper-kite",
    "rusty-anchor", "silver-willow", "wooden-bridge", "quiet-canyon", "lunar-bakery", "stormy-island",
)
_WORDS = (
    "apple", "bridge", "candle", "dolphin", "engine", "forest", "guitar", "harbor", "island", "jacket", "kettle",
    "ladder", "mirror", "needle", "orange", "pencil", "quartz", "rocket", "saddle", "tunnel", "umbrella", "violin",
    "wallet", "yogurt", "zipper", "basket", "carpet", "dragon", "feather", "garden", "helmet", "lemon", "marble",
)


@dataclass(frozen=True)
class RulerSample:
    """One generated example: prompt parts and the references that score it."""

    task: str
    context: str
    question: str
    answer_prefix: str
    answers: tuple[str, ...]

    @property
    def query(self) -> str:
        """What follows the context: question and answer prefix (completion style)."""
        return f"\n\nQuestion: {self.question}\nAnswer: {self.answer_prefix}"

    @property
    def prompt(self) -> str:
        """The whole prompt, ``context + query``."""
        return self.context + self.query


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _embed(length: int, items: Sequence[str], rng: random.Random, count_tokens: TokenCounter, seed: int) -> str:
    """Filler of ``length`` tokens minus the items', with each item at a random sentence boundary."""
    room = max(0, length - sum(count_tokens(" " + item) for item in items))
    sentences = fill_to_tokens(room, count_tokens, seed=seed)
    positions = sorted(rng.randint(0, len(sentences)) for _ in items)
    for offset, (position, item) in enumerate(zip(positions, items)):
        sentences.insert(position + offset, item)
    return " ".join(sentences)


def niah_single(length: int, seed: int = 0, count_tokens: TokenCounter = approx_token_count) -> RulerSample:
    """One key, one 7-digit value hidden in filler; retrieve the value."""
    rng = random.Random(seed)
    key, value = rng.choice(_KEYS), _number(rng)
    needle = f"One of the special magic numbers for {key} is: {value}."
    context = _embed(length, [needle], rng, count_tokens, seed)
    return RulerSample("niah_single", context, f"What is the special magic number for {key}?",
                       f"The special magic number for {key} is", (value,))


def niah_multikey(length: int, seed: int = 0, count_tokens: TokenCounter = approx_token_count, num_keys: int = 4) -> RulerSample:
    """``num_keys`` key/value needles (distractors); retrieve the value of one key."""
    rng = random.Random(seed)
    keys = rng.sample(_KEYS, num_keys)
    values = [_number(rng) for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
    context = _embed(length, needles, rng, count_tokens, seed)
    target = rng.randrange(num_keys)
    return RulerSample("niah_multikey", context, f"What is the special magic number for {keys[target]}?",
                       f"The special magic number for {keys[target]} is", (values[target],))


def niah_multivalue(length: int, seed: int = 0, count_tokens: TokenCounter = approx_token_count, num_values: int = 3) -> RulerSample:
    """One key with ``num_values`` values; retrieve them all."""
    rng = random.Random(seed)
    key = rng.choice(_KEYS)
    values = tuple(_number(rng) for _ in range(num_values))
    needles = [f"One of the special magic numbers for {key} is: {v}." for v in values]
    context = _embed(length, needles, rng, count_tokens, seed)
    return RulerSample("niah_multivalue", context, f"What are all the special magic numbers for {key}?",
                       f"The special magic numbers for {key} are", values)


def variable_tracking(length: int, seed: int = 0, count_tokens: TokenCounter = approx_token_count, hops: int = 4) -> RulerSample:
    """A chain ``VAR A = 12345, VAR B = VAR A, ...`` plus a distractor chain; name every variable equal to the value."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < 2 * (hops + 1):  # five upper-case letters, as in RULER
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    value, other = _number(rng, 5), _number(rng, 5)
    chains = []
    for chain_names, chain_value in ((names[: hops + 1], value), (names[hops + 1 :], other)):
        statements = [f"VAR {chain_names[0]} = {chain_value}."]
        statements += [f"VAR {b} = VAR {a}." for a, b in zip(chain_names, chain_names[1:])]
        chains.append(statements)
    ordered = [s for pair in zip(*chains) for s in pair]  # chains interleaved; _embed keeps this order
    context = _embed(length, ordered, rng, count_tokens, seed)
    return RulerSample("variable_tracking", context, f"Which variables are assigned the value {value}?",
                       f"The variables assigned the value {value} are:", tuple(names[: hops + 1]))


def common_words(length: int, seed: int = 0, count_tokens: TokenCounter = approx_token_count, top_k: int = 5) -> RulerSample:
    """A numbered word list where ``top_k`` words occur 10x as often as the others; name them.

    The list is built in whole rounds (each common word 10 times, each rare word once, shuffled),
    so the ``top_k`` common words are strictly the most frequent ones at any length.
    """
    rng = random.Random(seed)
    words = list(_WORDS)
    rng.shuffle(words)
    common, rare = words[:top_k], words[top_k:]
    lines: list[str] = []
    used = 0
    while True:
        round_words = [w for w in common for _ in range(10)] + rare
        rng.shuffle(round_words)
        round_lines = [f"{len(lines) + i + 1}. {w}" for i, w in enumerate(round_words)]
        size = sum(count_tokens(" " + line) for line in round_lines)
        if used + size > length and (lines or rare):
            if lines:
                break
            rare = rare[:-1]  # a tiny context: drop rare words until one round fits (or none is left)
            continue
        lines += round_lines
        used += size
    return RulerSample("common_words", " ".join(lines), f"What are the {top_k} most common words in the list above?",
                       f"The {top_k} most common words are:", tuple(common))


#: RULER-style task name -> its sample generator.
TASKS: dict[str, Callable[..., RulerSample]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "variable_tracking": variable_tracking,
    "common_words": common_words,
}


def generate(task: str, length: int, seed: int = 0, count_tokens: TokenCounter = approx_token_count) -> RulerSample:
    """Build one sample of ``task`` (a key of :data:`TASKS`)."""
    if task not in TASKS:
        raise ValueError(f"Unknown RULER task {task!r}; expected one of: {', '.join(TASKS)}.")
    if isinstance(length, bool) or not isinstance(length, int) or length < MIN_LENGTH:
        raise ValueError(f"length must be an int >= {MIN_LENGTH} tokens, got {length!r}.")
    return TASKS[task](length, seed=seed, count_tokens=count_tokens)


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Share of ``references`` that occur in ``prediction`` (case-insensitive), RULER's metric.

    >>> string_match_all("A1 and B2", ["a1", "c3"])
    0.5
    """
    if not references:
        raise ValueError("string_match_all needs at least one reference.")
    lowered = prediction.lower()
    return sum(ref.lower() in lowered for ref in references) / len(references)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the stripped, case-folded strings are equal, else 0.0.

    >>> exact_match(" Paris ", "paris")
    1.0
    """
    return float(prediction.strip().casefold() == reference.strip().casefold())
