"""Varied synthetic prompts, generated locally from a seed (calibration and funnel measurements).

Each prompt mixes genres whose attention patterns differ: narrative prose, key-value records,
a small table, a dialogue and a program, then ends with a question about one of the records,
so the observation window has something specific to look back for. No data files, no download.

Examples
--------
>>> text = synthetic_text(200, seed=3)
>>> text == synthetic_text(200, seed=3), text != synthetic_text(200, seed=4)
(True, True)
"""

from __future__ import annotations

import random

import torch

__all__ = ["synthetic_text", "synthetic_prompts"]

_NAMES = ("Alice", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
          "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yusuf")
_THINGS = ("the lighthouse", "a copper kettle", "the old map", "a basket of pears", "the stone bridge", "the violin",
           "a box of letters", "the garden gate", "the night train", "a wool scarf", "the harbour crane", "the clock")
_VERBS = ("repaired", "painted", "carried", "studied", "described", "borrowed", "cleaned", "measured", "sketched",
          "sold", "found", "hid", "photographed", "weighed", "wrapped")
_PLACES = ("near the harbour", "in the market square", "behind the mill", "on the hillside", "in the attic",
           "at the station", "by the frozen lake", "inside the museum", "along the canal", "under the oak")
_TOPICS = ("weather", "trains", "recipes", "taxes", "music", "gardens", "chess", "rivers", "bridges", "stars")


def _narrative(rng: random.Random) -> str:
    return (f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} {rng.choice(_THINGS)} {rng.choice(_PLACES)}, "
            f"while {rng.choice(_NAMES)} talked about {rng.choice(_TOPICS)}.")


def _record(rng: random.Random, facts: list[tuple[str, int]]) -> str:
    name, code = rng.choice(_NAMES), rng.randint(1000, 9999)
    facts.append((name, code))
    return f"Record: the access code of {name} is {code}."


def _table(rng: random.Random) -> str:
    rows = [f"| {rng.choice(_NAMES)} | {rng.choice(_TOPICS)} | {rng.randint(1, 99)} |" for _ in range(rng.randint(2, 5))]
    return "\n".join(["| name | topic | score |", *rows])


def _dialogue(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    return f'{a}: "Did you see {rng.choice(_THINGS)}?"\n{b}: "Yes, {rng.choice(_PLACES)}, {rng.choice(_PLACES)} too."'


def _program(rng: random.Random) -> str:
    var, n = rng.choice(("total", "count", "score", "width")), rng.randint(2, 9)
    return f"def {rng.choice(_TOPICS)}_{var}(items):\n    {var} = 0\n    for x in items[:{n}]:\n        {var} += x\n    return {var}"


def synthetic_text(num_words: int, seed: int = 0) -> str:
    """About ``num_words`` words of mixed-genre text ending with a question about one record."""
    rng = random.Random(seed)
    genres = (_narrative, _narrative, _narrative, _table, _dialogue, _program)
    facts: list[tuple[str, int]] = []
    parts: list[str] = []
    words = 0
    while words < num_words:
        part = _record(rng, facts) if rng.random() < 0.15 else rng.choice(genres)(rng)
        parts.append(part)
        words += len(part.split())
    if not facts:
        parts.append(_record(rng, facts))
    name, _ = rng.choice(facts)
    return "\n\n".join(parts) + f"\n\nQuestion: what is the access code of {name}? Answer:"


def synthetic_prompts(tokenizer, count: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` prompts of exactly ``length`` token ids each (1-D int64 tensors), seeds ``seed, seed + 1, ...``.

    The text's beginning is cut so that the final question survives the truncation.
    """
    prompts = []
    for index in range(count):
        words = max(16, length)
        while True:
            ids = tokenizer(synthetic_text(words, seed=seed + index), add_special_tokens=False)["input_ids"]
            if len(ids) >= length:
                break
            words *= 2
        prompts.append(torch.tensor(ids[len(ids) - length:], dtype=torch.long))
    return prompts
