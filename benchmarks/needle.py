"""Needle in a haystack: a passcode hidden at a given depth of a context of a given length.

The prompt is *completion* style, question and answer prefix inside the prompt::

    <haystack with "The secret passcode is 48213." at depth d>

    Question: What is the secret passcode?
    Answer: The secret passcode is

Why completion style: in its chat format (the question in the user turn) the embedded
SmolLM2-135M-Instruct misses the needle even with the full cache in half of the cells (4 of 8
measured between 1K and 4K tokens: it describes the haystack or invents a "code"), while it
completes the answer prefix correctly in every cell of the demo grid (1K and 2K tokens; at 4K it
starts to miss with the full cache too). So the comparison measures the cache, not the prompt
format. Lengths are counted in tokens of the model's
tokenizer; a cell is correct when the needle's digits appear in the greedy output. The haystack
is the seeded, digit-free filler of :mod:`kvpress_lab.benchmarks.haystack`; each cell draws its own
5-digit passcode from the seed, the length and the depth.

Based on the evaluation of https://arxiv.org/abs/2406.02069 (PyramidKV), figure "needle in a
haystack", and Greg Kamradt's original test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvpress_lab.benchmarks.haystack import fill_to_tokens
from kvpress_lab.benchmarks.shared_generation import DEFAULT_SHARE

__all__ = ["NeedlePrompt", "QUESTION", "MIN_LENGTH", "build_needle_prompt", "required_length", "token_counter",
           "is_correct", "needle_cells", "run_needle"]

QUESTION = "\n\nQuestion: What is the secret passcode?\nAnswer: The secret passcode is"

#: Fewest prompt tokens :func:`build_needle_prompt` accepts, whatever the tokenizer.
MIN_LENGTH = 64
_NEEDLE = "The secret passcode is {code}."


@dataclass(frozen=True)
class NeedlePrompt:
    """One needle prompt: ``context + question`` is what the model reads."""

    context: str
    question: str
    passcode: str
    length: int
    depth: float

    @property
    def needle(self) -> str:
        """The sentence hidden in the haystack."""
        return _NEEDLE.format(code=self.passcode)


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """``text -> number of tokens`` for ``tokenizer``, without special tokens."""
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def _passcode(seed: int, length: int, depth: float) -> str:
    rng = random.Random(f"needle/{seed}/{length}/{depth:.6f}")
    return str(rng.randint(10_000, 99_999))


def build_needle_prompt(length: int, depth: float, count_tokens: Callable[[str], int], seed: int = 0) -> NeedlePrompt:
    """Hide a passcode at ``depth`` of a haystack so that the prompt holds about ``length`` tokens.

    Parameters
    ----------
    length : int
        Target prompt length in tokens (haystack + needle + question), at least
        :func:`required_length` (``>= 64``).
    depth : float
        Relative position of the needle in the haystack, in ``[0, 1]`` (0: first sentence).
    count_tokens : Callable[[str], int]
        Token counter of the model's tokenizer (:func:`token_counter`).
    seed : int
        Haystack and passcode seed; the haystack depends on ``seed`` only, so every depth of a
        length hides its needle in the same text.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < MIN_LENGTH:
        raise ValueError(f"length must be an int >= {MIN_LENGTH} tokens, got {length!r}.")
    if not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be a number in [0, 1], got {depth!r}.")
    passcode = _passcode(seed, length, float(depth))
    needle = _NEEDLE.format(code=passcode)
    room = length - count_tokens(QUESTION) - count_tokens(" " + needle)
    if room < 0:
        raise ValueError(f"length {length} is too short for the needle prompt: its question and needle take "
                         f"{length - room} tokens; use a length >= {required_length(length, depth, count_tokens, seed)}.")
    sentences = fill_to_tokens(room, count_tokens, seed=seed)
    # Insert at the sentence boundary closest to depth x (haystack tokens).
    sizes = [count_tokens(" " + s) for s in sentences]
    target, running, index = depth * sum(sizes), 0, 0
    while index < len(sentences) and running + sizes[index] / 2 < target:
        running += sizes[index]
        index += 1
    sentences.insert(index, needle)
    return NeedlePrompt(" ".join(sentences), QUESTION, passcode, length, float(depth))


def required_length(length: int, depth: float, count_tokens: Callable[[str], int], seed: int = 0) -> int:
    """Fewest tokens the needle prompt of cell ``(length, depth)`` can have: question + needle, and >= :data:`MIN_LENGTH`.

    The needle's passcode depends on the cell, hence ``length`` and ``depth``; a ``length`` below
    the result makes :func:`build_needle_prompt` fail.
    """
    needle = _NEEDLE.format(code=_passcode(seed, length, float(depth)))
    return max(MIN_LENGTH, count_tokens(QUESTION) + count_tokens(" " + needle))


def is_correct(output: str, passcode: str) -> bool:
    """Whether the needle's digits appear in the model's output."""
    return passcode in output


def needle_cells(lengths: Sequence[int], depths: Sequence[float]) -> list[tuple[int, float]]:
    """The grid ``lengths x depths`` in row-major order, validated."""
    if not lengths or not depths:
        raise ValueError(f"needle grid needs at least one length and one depth, got {list(lengths)} x {list(depths)}.")
    return [(int(length), float(depth)) for length in lengths for depth in depths]


def run_needle(
    model: Any,
    tokenizer: Any,
    recipes: Iterable[tuple[str, int | None, Any]],
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    mode: str = "query-aware",
    seed: int = 0,
    max_new_tokens: int = 8,
    progress: bool = True,
    share: int | None = DEFAULT_SHARE,
    warm_up: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every ``(label, size, recipe)`` on every cell of the grid.

    Parameters
    ----------
    recipes : iterable of (str, CacheSize, Recipe or None)
        Label (preset name or ``"full"``), :class:`~kvpress_lab.recipe_labels.CacheSize` (a
        budget, a compression ratio, or neither) and recipe (``None`` for the full cache).
    lengths, depths : sequence
        Grid: prompt lengths in tokens and needle depths in ``[0, 1]``.
    mode : {"query-aware", "query-agnostic"}
        See :mod:`kvpress_lab.benchmarks.generation`.
    share : int or None
        Recipes compressed from one shared prefill of each prompt
        (:mod:`~kvpress_lab.benchmarks.shared_generation`); ``None`` or 1: one prefill per cell.
        The answers are the same either way.
    warm_up : bool
        Run the full cache once on the first prompt (2 tokens, not recorded) before timing any cell.

    Returns
    -------
    list of dict
        One row per recipe and cell: ``recipe``, ``budget``, ``length``, ``depth``, ``prompt_tokens``,
        ``passcode``, ``output``, ``correct``, ``prefill_s``, ``decode_step_s``, ``kv_bytes``,
        ``shared_prefill``, ``recipe_config`` (and ``compression_ratio`` for a ratio entry, whose
        ``budget`` is ``None``).
    """
    from tqdm.auto import tqdm

    from kvpress_lab.benchmarks.generation import generate_answer
    from kvpress_lab.benchmarks.shared_generation import generate_answers

    recipes = list(recipes)
    count = token_counter(tokenizer)
    prompts = [build_needle_prompt(length, depth, count, seed=seed) for length, depth in needle_cells(lengths, depths)]
    if warm_up and prompts and recipes:  # the first forward pays allocation and kernel choice: not in a cell's time
        generate_answer(model, tokenizer, None, prompts[0].context, prompts[0].question, mode=mode, max_new_tokens=2)
    rows = []
    with tqdm(total=len(recipes) * len(prompts), desc="needle", unit="cell", disable=not progress) as bar:
        for prompt in prompts:
            bar.set_postfix_str(f"T={prompt.length} d={prompt.depth:g}")
            answers = generate_answers(model, tokenizer, [recipe for _, _, recipe in recipes], prompt.context,
                                       prompt.question, mode=mode, max_new_tokens=max_new_tokens, share=share)
            for index, result in answers:
                label, size, recipe = recipes[index]
                rows.append({
                    "recipe": label, **size.row_fields(), "length": prompt.length,
                    "depth": prompt.depth, "prompt_tokens": result.prompt_tokens, "passcode": prompt.passcode,
                    "output": result.text, "correct": is_correct(result.text, prompt.passcode),
                    "prefill_s": result.prefill_s, "decode_step_s": result.decode_step_s, "kv_bytes": result.kv_bytes,
                    "shared_prefill": result.shared, "mode": mode,
                    "recipe_config": None if recipe is None else recipe.to_dict(),
                })
                bar.update()
    return rows
