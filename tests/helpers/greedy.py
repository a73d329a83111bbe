"""Greedy generation with scores, optionally inside a recipe's session (shared by the decoding tests)."""

from __future__ import annotations

STEPS = 4


def greedy_generate(model, ids, mask=None, recipe=None, steps=STEPS):
    """``model.generate`` greedily for ``steps`` tokens with scores; returns ``(output, session or None)``.

    With a ``recipe``, generation runs inside ``recipe.apply(model, record_indices=True)`` and
    the session (its ``selections``) is returned too.
    """
    kwargs = dict(attention_mask=mask, max_new_tokens=steps, do_sample=False, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=0)
    if recipe is None:
        return model.generate(ids, **kwargs), None
    with recipe.apply(model, record_indices=True) as session:
        return model.generate(ids, **kwargs), session
