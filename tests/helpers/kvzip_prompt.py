"""A hand-made KVzip repeat prompt for the tiny test models, which have no tokenizer."""

from __future__ import annotations

#: ``scorer_kwargs`` giving the ``kvzip`` scorer its prompt ids (any ids below the tiny vocabulary).
TINY_PROMPT = {"repeat_ids": [3, 4, 5], "continue_ids": [6, 7], "suffix_ids": [8]}


def scorer_kwargs(scorer: str) -> dict:
    """Extra scorer arguments a registered scorer needs on a tiny model (only ``kvzip``: its prompt ids)."""
    return dict(TINY_PROMPT) if scorer == "kvzip" else {}
