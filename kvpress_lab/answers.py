"""Compress once, ask many: prefill and compress a context once, answer each question on its own copy.

A server answering several questions about one document pays for one compressed prefill; each
question then decodes on a private copy of the compressed cache, so answers never see each
other. This is query-agnostic compression: the scorer ranks the context's entries without
knowing the questions (see the methods built for it, and the needle benchmark's
``--mode query-agnostic``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from kvpress_lab.recipe import Recipe

__all__ = ["Answer", "ask", "split_prompt", "recipe_argument"]

_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Answer:
    """One question's answer.

    Parameters
    ----------
    question : str
        The question asked.
    text : str
        The generated answer, special tokens removed.
    new_tokens : int
        Tokens generated.
    question_tokens : int
        Tokens of the question (with the chat template's closing part) appended to the context.
    seconds : float
        Time to copy the cache and generate the answer.
    context_tokens : int
        Tokens of the shared, compressed context.
    prefill_seconds : float
        Time of the one compressed prefill (shared by every answer of the call).
    """

    question: str
    text: str
    new_tokens: int
    question_tokens: int
    seconds: float
    context_tokens: int
    prefill_seconds: float


def split_prompt(tokenizer: Any, context: str, question: str, *, chat_template: bool | None = None) -> tuple[str, str]:
    """The prompt for ``question`` about ``context``, split where the context ends.

    With a chat template (used when the tokenizer has one and ``chat_template`` is not
    ``False``), the user turn is ``context + "\\n\\n" + question``; the split falls right after the
    context, so every question shares the same context prefix. Without: ``context`` and
    ``"\\n\\n" + question``.
    """
    use_template = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    if not use_template:
        return context, _SEPARATOR + question
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True, but this tokenizer has no chat template; pass chat_template=False.")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": context + _SEPARATOR + question}], add_generation_prompt=True, tokenize=False
    )
    cut = rendered.rfind(context + _SEPARATOR + question)
    if cut < 0:
        raise ValueError("the chat template changed the user message's text; pass chat_template=False.")
    cut += len(context)
    return rendered[:cut], rendered[cut:]


@torch.no_grad()
def ask(
    model: torch.nn.Module,
    tokenizer: Any,
    context: str,
    questions: str | Sequence[str],
    recipe: Recipe | None = None,
    *,
    chat_template: bool | None = None,
    chunk_size: int | None = None,
    **generate_kwargs: Any,
) -> list[Answer]:
    """Answer ``questions`` about ``context``, compressing the context once.

    Parameters
    ----------
    model, tokenizer
        A causal LM of a supported family and its tokenizer (e.g. from
        :func:`kvpress_lab.models.load_model`).
    context : str
        The document, prefilled and compressed once.
    questions : str or sequence of str
        One or several questions; each is answered on its own copy of the compressed cache.
    recipe : Recipe, str, Mapping or None
        The compression recipe: a :class:`~kvpress_lab.Recipe`, a preset name (``"snapkv"``), or a
        dict of Recipe fields (:meth:`Recipe.from_dict <kvpress_lab.Recipe.from_dict>`); ``None``
        keeps the full cache (the reference to compare with).
    chat_template : bool or None
        Wrap context and question in the tokenizer's chat template; default: when it has one.
    chunk_size : int or None
        Prefill the context in chunks of this many tokens (:mod:`kvpress_lab.engine.chunking`),
        compressing after each chunk; with ``recipe=None`` the full cache is prefilled in chunks.
    **generate_kwargs
        Passed to ``model.generate`` (default ``max_new_tokens=64``, greedy). ``ask`` builds the
        inputs and the cache itself and returns one answer per question, so it refuses the options
        that would change those (``input_ids``, ``attention_mask``, ``cache``,
        ``return_dict_in_generate``, ``num_beams`` or ``num_return_sequences`` above 1, ...).

    Returns
    -------
    list[Answer]
        One per question, in order.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, what it must be and what it was, before anything runs.
    RuntimeError
        Inside a ``with recipe.apply(model)`` block of the same thread (its session would compress
        the context's prefill too). Other threads may call ``ask`` on the same model at the same
        time: each call's results equal a call made alone.

    Examples
    --------
    >>> from kvpress_lab import Recipe, ask                            # doctest: +SKIP
    >>> from kvpress_lab.models import load_model                      # doctest: +SKIP
    >>> model, tokenizer = load_model("smollm2-135m-instruct")         # doctest: +SKIP
    >>> answers = ask(model, tokenizer, document, ["Who?", "When?"], Recipe.preset("snapkv", budget=128))  # doctest: +SKIP
    """
    from kvpress_lab.engine.chunking import check_chunk_size
    from kvpress_lab.engine.model_hooks import hooks_in_use

    if not isinstance(context, str):
        raise TypeError(f"context must be a non-empty string, got {type(context).__name__}: {context!r:.40}.")
    if not context:
        raise ValueError("context must be a non-empty string, got ''.")
    questions = _question_list(questions)
    recipe = recipe_argument(recipe)
    check_chunk_size(chunk_size)
    _check_generate_options(generate_kwargs)
    prompts = [split_prompt(tokenizer, context, q, chat_template=chat_template) for q in questions]
    prefixes = {prefix for prefix, _ in prompts}
    if len(prefixes) != 1:
        raise ValueError("the chat template renders the context differently for different questions; pass chat_template=False.")
    device = next(model.parameters()).device
    context_ids = tokenizer(prefixes.pop(), add_special_tokens=not _has_template(tokenizer, chat_template),
                            return_tensors="pt").input_ids.to(device)
    options = {"max_new_tokens": 64, "do_sample": False, **generate_kwargs}
    options.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    with hooks_in_use(model, "kvpress_lab.ask"):  # the decoding hooks, for this call only (other threads keep theirs)
        return _answer_all(model, tokenizer, recipe, context_ids, questions, prompts, options, chunk_size)


#: generate options ask sets itself, or that would give other than one answer per question.
_ASK_CONTROLS = ("input_ids", "inputs", "attention_mask", "cache", "past_key_values", "use_cache",
                 "return_dict_in_generate", "prefill_chunk_size")


def _check_generate_options(options: dict[str, Any]) -> None:
    taken = sorted(set(options) & set(_ASK_CONTROLS))
    if taken:
        raise TypeError(f"ask() builds {', '.join(taken)} itself (the context's cache and each question's inputs); "
                        "drop them (use chunk_size= for a chunked prefill).")
    for name in ("num_beams", "num_return_sequences"):
        value = options.get(name, 1)
        if value not in (None, 1):
            raise ValueError(f"ask() returns one answer per question, decoded on a copy of one compressed cache row; "
                             f"{name}={value!r} would need that row repeated. Call model.generate yourself for several "
                             "sequences, or ask again (do_sample=True gives a new sample each call).")


def _question_list(questions: Any) -> list[str]:
    """``questions`` as a non-empty list of non-empty strings, or a clear error."""
    if isinstance(questions, str):
        questions = [questions]
    elif isinstance(questions, Sequence) and not isinstance(questions, (bytes, bytearray)):
        questions = list(questions)
    else:
        raise TypeError(f"questions must be a string or a sequence of strings, got {type(questions).__name__}: {questions!r:.60}.")
    bad = [f"{i}: {type(q).__name__}" for i, q in enumerate(questions) if not isinstance(q, str)]
    if bad:
        raise TypeError(f"questions must be strings; got {', '.join(bad[:3])} at those positions.")
    if not questions or not all(questions):
        raise ValueError(f"questions must be one or more non-empty strings, got {questions!r:.80}.")
    return questions


def recipe_argument(recipe: Any) -> Recipe | None:
    """A ``recipe=`` argument as a :class:`~kvpress_lab.Recipe` (or ``None``: no compression).

    Takes a Recipe, a preset name (``"snapkv"``, as the lm-eval model type does), a dict of Recipe
    fields, or ``None``; anything else is a ``TypeError`` naming the accepted forms.
    """
    from kvpress_lab.recipe import Recipe

    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str):
        return Recipe.preset(recipe)
    if isinstance(recipe, Mapping):
        return Recipe.from_dict(recipe)
    raise TypeError(f"recipe must be a kvpress_lab.Recipe, a preset name (str), a dict of Recipe fields or None, "
                    f"got {type(recipe).__name__}: {recipe!r:.60}.")


def _answer_all(model, tokenizer, recipe, context_ids, questions, prompts, options, chunk_size) -> list[Answer]:
    from kvpress_lab.engine.prefill import compressed_prefill, full_prefill

    device = context_ids.device
    start = time.perf_counter()
    if recipe is None:
        cache = full_prefill(model, context_ids, chunk_size=chunk_size)
    else:
        cache = compressed_prefill(recipe, model, context_ids, chunk_size=chunk_size)
    prefill_seconds = time.perf_counter() - start

    answers = []
    for question, (_, suffix) in zip(questions, prompts):
        question_ids = tokenizer(suffix, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
        full = torch.cat([context_ids, question_ids], dim=1)
        start = time.perf_counter()
        # decoding-time compression (recipe.decode_budget) runs inside the recipe's session
        decoding = recipe.apply(model) if recipe is not None and recipe.decode_budget is not None else contextlib.nullcontext()
        with decoding:
            generated = model.generate(full, attention_mask=torch.ones_like(full), cache=copy.deepcopy(cache), **options)
        seconds = time.perf_counter() - start
        new = generated[0, full.shape[1]:]
        answers.append(Answer(
            question=question, text=tokenizer.decode(new, skip_special_tokens=True).strip(), new_tokens=int(new.numel()),
            question_tokens=int(question_ids.shape[1]), seconds=seconds, context_tokens=int(context_ids.shape[1]),
            prefill_seconds=prefill_seconds,
        ))
    return answers


def _has_template(tokenizer: Any, chat_template: bool | None) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
