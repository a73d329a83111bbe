"""The fidelity harness's prompts: seeded filler with a few facts, a question answered in the document.

Each prompt follows kvpress's pipeline (``KVPressTextGenerationPipeline.preprocess``): the document
is the user turn of the tokenizer's chat template, cut at a separator; the *context* is everything
before it (system prompt, user header, document) and the *question* is the question text plus
what follows the separator (end of turn, assistant header). The context is compressed; the
question is asked on the compressed cache.

Examples
--------
>>> fact = FACTS[0]
>>> fact.answer in fact.sentence and fact.answer not in fact.question
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvpress_lab.benchmarks.haystack import fill_to_tokens, iter_filler_sentences

__all__ = ["Fact", "FACTS", "Prompt", "chat_split", "build_prompt", "build_prompts", "continuation_ids"]


@dataclass(frozen=True)
class Fact:
    """A sentence placed in the document, and the question it answers."""

    sentence: str
    question: str
    answer: str


FACTS = (
    Fact("The code of the blue gate is 4172.", "What is the code of the blue gate?", "4172"),
    Fact("The ferry to the island leaves at 7:45.", "At what time does the ferry to the island leave?", "7:45"),
    Fact("The lighthouse keeper has 36 jars of honey.", "How many jars of honey does the lighthouse keeper have?", "36"),
)
_DEPTHS = (0.2, 0.5, 0.8)  # where the facts sit in the filler, as fractions of its sentences


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``context_ids`` ``(1, T)`` and ``question_ids`` ``(1, Q)``, both without special tokens added."""

    name: str
    context_ids: torch.Tensor
    question_ids: torch.Tensor
    question: str
    answer: str


def chat_split(tokenizer, document: str) -> tuple[str, str]:
    """``(context, question_suffix)``: the chat-templated user turn holding ``document``, cut after it.

    Without a chat template: ``(bos + document, "\\n")``, as kvpress's pipeline.
    """
    if tokenizer.chat_template is None:
        return (tokenizer.bos_token or "") + document, "\n"
    separator = "#" * (len(document) + 10)
    text = tokenizer.apply_chat_template([{"role": "user", "content": document + separator}],
                                         add_generation_prompt=True, tokenize=False)
    context, suffix = text.split(separator)
    return context, suffix


def build_prompt(tokenizer, tokens: int, index: int = 0, seed: int = 0) -> Prompt:
    """A prompt whose document holds about ``tokens`` tokens, every fact, and asks ``FACTS[index % 3]``."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    fact = FACTS[index % len(FACTS)]
    budget = tokens - sum(count(" " + f.sentence) for f in FACTS)
    sentences = fill_to_tokens(max(budget, 0), count, seed=seed + index)
    for depth, placed in sorted(zip(_DEPTHS, FACTS), key=lambda pair: -pair[0]):
        sentences.insert(int(depth * len(sentences)), placed.sentence)
    context, suffix = chat_split(tokenizer, " ".join(sentences))
    question = f"\n\nQuestion: {fact.question} Answer briefly."

    def encode(text: str) -> torch.Tensor:
        return tokenizer.encode(text, add_special_tokens=False, return_tensors="pt")

    return Prompt(f"T{tokens}", encode(context), encode(question + suffix), fact.question, fact.answer)


def build_prompts(tokenizer, lengths: Sequence[int], seed: int = 0) -> list[Prompt]:
    """One :func:`build_prompt` per length (prompt ``i`` asks fact ``i``); names must differ."""
    if len(set(lengths)) != len(lengths):
        raise ValueError(f"Expected distinct --lengths, got {list(lengths)}.")
    return [build_prompt(tokenizer, length, index, seed) for index, length in enumerate(lengths)]


def continuation_ids(tokenizer, steps: int, seed: int = 0) -> torch.Tensor:
    """``(1, steps)`` ids of fresh filler text: the fixed continuation teacher-forced in the decoding case."""
    ids: list[int] = []
    for sentence in iter_filler_sentences(seed + 1000):
        ids += tokenizer(" " + sentence, add_special_tokens=False).input_ids
        if len(ids) >= steps:
            return torch.tensor([ids[:steps]])
    raise AssertionError("unreachable: the filler stream is endless")  # pragma: no cover
