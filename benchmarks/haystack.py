"""Deterministic filler text for synthetic long-context tasks (no download, no data files).

The haystack is a stream of varied, digit-free English sentences built from small word lists
with a seeded :class:`random.Random`, so the same seed always gives the same text and a needle
made of digits is the only number in the prompt.

Examples
--------
>>> sentences = filler_sentences(3, seed=0)
>>> sentences == filler_sentences(3, seed=0)
True
>>> any(ch.isdigit() for s in sentences for ch in s)
False
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["filler_sentences", "iter_filler_sentences", "fill_to_tokens", "approx_token_count"]

_SUBJECTS = (
    "The old fisherman", "A young painter", "The village baker", "My neighbour", "The quiet librarian",
    "A travelling merchant", "The school teacher", "An elderly gardener", "The ship's captain", "A curious child",
    "The town mayor", "A tired farmer", "The river guide", "A wandering poet", "The museum guard",
    "Her grandmother", "The blacksmith", "A retired sailor", "The shepherd", "A street musician",
)
_VERBS = (
    "repaired", "painted", "carried", "studied", "described", "collected", "admired", "cleaned", "measured",
    "sketched", "polished", "sorted", "examined", "borrowed", "wrapped", "counted", "planted", "folded",
)
_OBJECTS = (
    "the wooden boat", "a basket of apples", "the broken fence", "an old map", "the garden gate",
    "a bundle of letters", "the copper kettle", "a pile of books", "the linen curtains", "a small lantern",
    "the stone bridge", "a box of buttons", "the faded quilt", "a jar of honey", "the iron key",
    "the leather saddle", "a roll of canvas", "the tall ladder", "a crate of pears", "the brass compass",
)
_PLACES = (
    "near the harbour", "behind the chapel", "in the market square", "beside the mill", "on the hillside",
    "under the old oak", "by the frozen lake", "at the edge of the forest", "inside the lighthouse",
    "along the canal", "in the dusty attic", "across the meadow", "next to the bakery", "on the station platform",
)
_TIMES = (
    "before sunrise", "after the storm", "during the long winter", "on a windy afternoon", "late in the evening",
    "while the bells rang", "as the fog lifted", "at the end of summer", "before the guests arrived",
    "when the tide was low", "after a quiet supper", "in the early spring",
)
_CLOSERS = (
    "Nobody seemed to notice.", "It was a peaceful day.", "The air smelled of rain.", "Birds sang in the hedges.",
    "Everyone agreed it was a fine idea.", "The work took longer than expected.", "A dog barked in the distance.",
    "Later, they all went home.", "The sky turned a pale shade of orange.", "It became a story told for years.",
)


def iter_filler_sentences(seed: int = 0) -> Iterator[str]:
    """Yield an endless, seeded stream of digit-free filler sentences.

    Parameters
    ----------
    seed : int
        Seed of the private :class:`random.Random`; the global random state is untouched.
    """
    rng = random.Random(seed)
    while True:
        if rng.random() < 0.2:
            yield rng.choice(_CLOSERS)
            continue
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_PLACES)]
        if rng.random() < 0.6:
            parts.append(rng.choice(_TIMES))
        yield " ".join(parts) + "."


def filler_sentences(count: int, seed: int = 0) -> list[str]:
    """The first ``count`` sentences of :func:`iter_filler_sentences` for ``seed``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}.")
    stream = iter_filler_sentences(seed)
    return [next(stream) for _ in range(count)]


def approx_token_count(text: str) -> int:
    """Tokenizer-free estimate of BPE tokens: 1.3 per whitespace-separated word (for tests/dry runs)."""
    return int(round(1.3 * len(text.split())))


def fill_to_tokens(num_tokens: int, count_tokens: Callable[[str], int] = approx_token_count, seed: int = 0) -> list[str]:
    """Sentences whose joined text (``" ".join``) holds about ``num_tokens`` tokens, never more.

    Parameters
    ----------
    num_tokens : int
        Target size in tokens of ``count_tokens``.
    count_tokens : Callable[[str], int]
        Token counter, e.g. ``lambda s: len(tokenizer(s, add_special_tokens=False).input_ids)``.
        Sentences are counted one at a time with a leading space, which BPE tokenizers split at,
        so the sum matches the joined text to within a few tokens.
    seed : int
        Filler seed.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}.")
    out: list[str] = []
    total = 0
    cache: dict[str, int] = {}
    for sentence in iter_filler_sentences(seed):
        size = cache.get(sentence)
        if size is None:
            size = cache[sentence] = count_tokens(" " + sentence)
        if total + size > num_tokens:
            return out
        out.append(sentence)
        total += size
    raise AssertionError("unreachable: the filler stream is endless")  # pragma: no cover
