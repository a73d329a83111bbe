"""Several recipes on one prompt with one shared prefill (:func:`~kvpress_lab.engine.shared_prefill.compress_many`).

:func:`generate_answers` is :func:`~kvpress_lab.benchmarks.generation.generate_answer` for many
recipes at once: the prompt (query-aware) or the context (query-agnostic) is prefilled once per
group of at most ``share`` recipes, every recipe of the group gets its compressed cache from that
pass, and each then decodes from its own cache. The answers are those of one
``generate_answer`` call per recipe, token for token (tested):

- query-agnostic: ``compress_many(context)`` gives each recipe exactly ``recipe.prefill(context)``
  and decoding continues as in ``generate_answer``;
- query-aware: ``model.generate`` inside ``recipe.apply`` picks its first token from the
  prefill's last hidden state, which no recipe changes (compression acts on a layer's cache after
  its forward). That token is computed once, the same way (``lm_head`` of the last position, then
  greedy argmax), and ``generate`` continues from each recipe's cache with it appended.

Timing of a shared row (``GenerationResult.shared``): ``forward_s`` is the pass's model forward
(one for the whole group), ``compress_s`` this recipe's own compression (the time inside its roles,
:mod:`kvpress_lab.engine.role_timers`), ``pass_s`` the whole ``compress_many`` call (forward and
every recipe's compression) and ``recipes`` the group size. ``prefill_s`` is then
``forward_s + compress_s``: what this recipe's prefill costs on its own, comparable with an
unshared row's ``prefill_s``.

The full cache (``None``) shares too: ``compress_many`` hands over the pass's own full cache
(``forward_s`` is its whole prefill), and it decodes from it exactly as ``generate`` would have.

What cannot share runs alone, through ``generate_answer``: a recipe whose
scorer runs a pass of its own after the prefill (``needs == "reconstruction"``, e.g. ``kvzip``:
``compress_many`` does not replay it), a recipe with ``decode_budget`` in query-aware mode (its decoding-time compression needs the session attached
while decoding), and — in query-aware mode — a model whose generation config adds logits
processors to greedy decoding (repetition penalty, ``min_new_tokens``, ...), since the first token
is then not a plain argmax.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from kvpress_lab.benchmarks.defaults import DEFAULT_SHARE
from kvpress_lab.benchmarks.generation import MODES, ForwardTimer, GenerationResult, _mean, _synchronize, generate_answer
from kvpress_lab.cache_reports import cache_report

if TYPE_CHECKING:
    from kvpress_lab import Recipe

__all__ = ["DEFAULT_SHARE", "can_share", "generate_answers"]


# Generation-config fields that add a logits processor to greedy decoding, and their inert values.
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "sequence_bias": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "remove_invalid_values": (None, False),
}


def _plain_greedy(model: torch.nn.Module, min_new_tokens: int | None) -> bool:
    """Whether greedy ``generate`` picks its first token as the plain argmax of the last position's logits."""
    if min_new_tokens:
        return False
    config = getattr(model, "generation_config", None)
    return config is not None and all(getattr(config, name, None) in inert for name, inert in _PROCESSOR_FIELDS.items())


def can_share(recipe: Recipe | None, mode: str = "query-aware", model: torch.nn.Module | None = None,
              min_new_tokens: int | None = None) -> bool:
    """Whether ``recipe`` (``None``: the full cache) can take its cache from a shared prefill in ``mode`` (see the module docstring)."""
    if recipe is not None and getattr(recipe.strategies.scorer, "needs", None) == "reconstruction":
        return False  # (a scorer with a pass of its own after the prefill, e.g. kvzip: compress_many refuses it)
    if mode == "query-agnostic":
        return True
    return (recipe is None or recipe.decode_budget is None) and (model is None or _plain_greedy(model, min_new_tokens))


def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    recipes: Sequence[Recipe | None],
    context: str,
    question: str,
    *,
    mode: str = "query-aware",
    max_new_tokens: int = 8,
    share: int | None = DEFAULT_SHARE,
) -> Iterator[tuple[int, GenerationResult]]:
    """Yield ``(index into recipes, result)`` as each recipe's answer is decoded, in the order of ``recipes``.

    Parameters
    ----------
    recipes : sequence of Recipe or None
        ``None`` is the full cache (the shared pass's own).
    context, question, mode, max_new_tokens
        As in :func:`~kvpress_lab.benchmarks.generation.generate_answer`.
    share : int or None
        At most this many recipes per shared pass (their caches are held at once); ``1`` or
        ``None`` (no sharing) runs every recipe alone through ``generate_answer``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if share is not None and (isinstance(share, bool) or not isinstance(share, int) or share < 1):
        raise ValueError(f"share must be an integer >= 1 or None, got {share!r}.")
    recipes = list(recipes)
    shareable = [i for i, r in enumerate(recipes) if (share or 1) > 1 and can_share(r, mode, model)]
    if len(shareable) < 2:
        shareable = []
    ready: dict[int, tuple[Any, dict[str, Any]]] = {}  # index -> (cache, shared timing)
    prompt: _Prompt | None = None
    for i, recipe in enumerate(recipes):
        if i not in shareable:
            yield i, generate_answer(model, tokenizer, recipe, context, question, mode=mode, max_new_tokens=max_new_tokens)
            continue
        if i not in ready:
            prompt = prompt or _Prompt(model, tokenizer, context, question)
            group = [j for j in shareable if j >= i][:share]
            ready.update(_shared_pass(model, prompt, [recipes[j] for j in group], group, mode))
        cache, shared = ready.pop(i)
        yield i, _decode(model, tokenizer, prompt, cache, shared, mode, max_new_tokens, recipe)


class _Prompt:
    """Token ids of one prompt, as ``generate_answer`` builds them."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, context: str, question: str):
        device = next(model.parameters()).device
        self.context_ids = tokenizer(context, return_tensors="pt").input_ids.to(device)  # (1, Tc)
        self.question_ids = tokenizer(question, add_special_tokens=False, return_tensors="pt").input_ids.to(device)  # (1, Tq)
        self.full_ids = torch.cat([self.context_ids, self.question_ids], dim=-1)  # (1, T)
        self.first_token: torch.Tensor | None = None  # (1, 1), query-aware: greedy token after the prompt


class _LastHidden:
    """Forward hook on the decoder keeping its output's last position ``(B, 1, hidden)``."""

    def __init__(self, decoder: torch.nn.Module):
        self.hidden: torch.Tensor | None = None
        self._handle = decoder.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        self.hidden = hidden[:, -1:, :]

    def remove(self) -> None:
        self._handle.remove()


def _next_token(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Greedy token ``(B, 1)`` from the last hidden state, computed as ``generate`` does (``logits_to_keep=1``)."""
    logits = model.get_output_embeddings()(hidden)  # (B, 1, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits[:, -1, :].to(copy=True, dtype=torch.float32).argmax(dim=-1, keepdim=True)


@torch.no_grad()
def _shared_pass(model, prompt: _Prompt, recipes, indices, mode) -> dict[int, tuple[Any, dict[str, Any]]]:
    from kvpress_lab.engine.families import ModelAdapter
    from kvpress_lab.engine.role_timers import ROLES, time_roles
    from kvpress_lab.engine.shared_prefill import compress_many

    aware = mode == "query-aware"
    ids = prompt.full_ids if aware else prompt.context_ids
    mask = torch.ones_like(ids) if aware else None  # as generate_answer's generate (aware) / recipe.prefill (agnostic)
    last = _LastHidden(ModelAdapter.for_model(model).decoder) if aware else None
    device = ids.device
    try:
        with ForwardTimer(model) as forward, time_roles(model) as log:
            _synchronize(device)
            start = time.perf_counter()
            caches = compress_many(model, ids, recipes, attention_mask=mask)
            _synchronize(device)
            pass_s = time.perf_counter() - start
    finally:
        if last is not None:
            last.remove()
    if aware and prompt.first_token is None:
        prompt.first_token = _next_token(model, last.hidden)
    forward_s = forward.durations[0]
    timers = iter(log.entries)  # one per recipe, in order; the full cache (None) has no session
    out = {}
    for index, cache, recipe in zip(indices, caches, recipes):
        own = None if recipe is None else next(timers)[1]
        shared = {"pass_s": pass_s, "forward_s": forward_s, "compress_s": 0.0 if own is None else own.total,
                  "recipes": len(recipes),
                  **({f"{role}_s": 0.0 for role in ROLES} if own is None
                     else {k: v for k, v in own.as_dict().items() if k != "roles_s"})}
        out[index] = (cache, shared)
    return out


@torch.no_grad()
def _decode(model, tokenizer, prompt: _Prompt, cache, shared, mode, max_new_tokens, recipe=None) -> GenerationResult:
    report = cache_report(cache)
    prefill_s = shared["forward_s"] + shared["compress_s"]
    question_s = 0.0
    if mode == "query-agnostic":
        ids = prompt.full_ids
        # decoding-time compression runs inside the recipe's session, as in generate_answer
        decoding = recipe.apply(model) if recipe is not None and recipe.decode_budget is not None else contextlib.nullcontext()
        with decoding, ForwardTimer(model) as timer:
            output = model.generate(ids, cache=cache, max_new_tokens=max_new_tokens, do_sample=False,
                                    attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.pad_token_id)
        question_s, steps = timer.durations[0], timer.durations[1:]
        new = output[0, ids.shape[-1]:]
    else:
        first = prompt.first_token
        ids = torch.cat([prompt.full_ids, first], dim=-1)  # (1, T + 1)
        steps = []
        eos = model.generation_config.eos_token_id
        eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        new = first[0]
        if max_new_tokens > 1 and int(first) not in eos:
            with ForwardTimer(model) as timer:
                output = model.generate(ids, cache=cache, max_new_tokens=max_new_tokens - 1, do_sample=False,
                                        attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.pad_token_id)
            steps = timer.durations
            new = output[0, prompt.full_ids.shape[-1]:]
    return GenerationResult(
        text=tokenizer.decode(new, skip_special_tokens=True),
        prompt_tokens=int(prompt.full_ids.shape[-1]),
        prefill_s=prefill_s,
        question_s=question_s,
        decode_step_s=_mean(steps),
        kv_bytes=report.total_bytes,
        new_tokens=int(new.numel()),
        cache=report,
        shared=shared,
    )
