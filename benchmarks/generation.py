"""Run one prompt with or without a recipe and measure time and KV-cache bytes.

Two evaluation modes, as in the KV-compression literature:

- ``"query-aware"``: the whole prompt (context *and* question) is compressed inside
  ``with recipe.apply(model): model.generate(...)``, as in the PyramidKV and SnapKV papers.
- ``"query-agnostic"``: the context alone is compressed with :meth:`Recipe.prefill
  <kvpress_lab.Recipe.prefill>`, then the question is appended and decoding continues on a copy
  of that cache, as a server reusing one compressed document for many questions would.

``recipe=None`` runs the full (uncompressed) cache through the same code path.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from kvpress_lab.cache_reports import CacheReport, cache_report

if TYPE_CHECKING:
    from kvpress_lab import Recipe

__all__ = ["MODES", "GenerationResult", "ForwardTimer", "generate_answer"]

Mode = Literal["query-aware", "query-agnostic"]
MODES: tuple[str, ...] = ("query-aware", "query-agnostic")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ForwardTimer:
    """Times every top-level forward of ``model`` while attached; records the cache after the first.

    ``durations[0]`` is the prefill of a ``generate`` call (compression included when a recipe is
    applied), the others are decoding steps. ``first_cache`` is the
    ``cache_report`` of the cache returned by the first forward, i.e. what
    decoding starts from (``None`` when that forward returned no cache). A chunked prefill runs
    ``prefill_forwards`` forwards (one per chunk): ``first_cache`` is then taken after the last.
    """

    model: torch.nn.Module
    durations: list[float] = field(default_factory=list)
    first_cache: CacheReport | None = None
    prefill_forwards: int = 1
    _seen_first: bool = False
    _start: float = 0.0
    _handles: list[Any] = field(default_factory=list)

    def __enter__(self) -> ForwardTimer:
        device = next(self.model.parameters()).device

        def before(module: torch.nn.Module, args: tuple) -> None:
            _synchronize(device)
            self._start = time.perf_counter()

        def after(module: torch.nn.Module, args: tuple, output: Any) -> None:
            _synchronize(device)
            self.durations.append(time.perf_counter() - self._start)
            if not self._seen_first and len(self.durations) >= self.prefill_forwards:
                self._seen_first = True
                cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
                self.first_cache = cache_report(cache) if cache is not None else None

        self._handles = [self.model.register_forward_pre_hook(before), self.model.register_forward_hook(after)]
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._handles:
            self._handles.pop().remove()


@dataclass
class GenerationResult:
    """What one prompt produced and cost.

    Attributes
    ----------
    text : str
        Decoded new tokens (special tokens skipped).
    prompt_tokens : int
        Prompt length ``T`` (context + question).
    prefill_s : float
        Seconds of the compressed (or full) prefill: the whole prompt in query-aware mode, the
        context in query-agnostic mode. Compression is included.
    question_s : float
        Query-agnostic only: seconds to run the question tokens on the cache (0 otherwise).
    decode_step_s : float
        Mean seconds per decoding step (forward of one token), NaN when no step ran.
    kv_bytes : int
        Cache bytes right after prefill (query-agnostic: after the context's prefill), i.e.
        ``cache.total_bytes``.
    new_tokens : int
        Tokens generated.
    cache : CacheReport or None
        ``kvpress_lab.cache_report`` of the cache right after prefill (the same moment as
        ``kv_bytes``): per-layer entries and bytes, and the ratio to the uncompressed cache.
    shared : dict or None
        Set when the cache came from a prefill shared with other recipes
        (:mod:`kvpress_lab.benchmarks.shared_generation`): ``pass_s``, ``forward_s``,
        ``compress_s`` (with its ``score_s`` / ``allocate_s`` / ``select_s`` / ``gather_s``) and
        ``recipes``; ``prefill_s`` is then ``forward_s + compress_s``. ``None``: a prefill of its own.
    """

    text: str
    prompt_tokens: int
    prefill_s: float
    question_s: float
    decode_step_s: float
    kv_bytes: int
    new_tokens: int = 0
    cache: CacheReport | None = None
    shared: dict[str, Any] | None = None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@torch.no_grad()
def generate_answer(
    model: torch.nn.Module,
    tokenizer: Any,
    recipe: Recipe | None,
    context: str,
    question: str,
    *,
    mode: Mode = "query-aware",
    max_new_tokens: int = 8,
    min_new_tokens: int | None = None,
    prefill_chunk: int | None = None,
) -> GenerationResult:
    """Greedy-decode an answer to ``context + question`` with ``recipe`` (``None``: full cache).

    Parameters
    ----------
    model, tokenizer
        A causal LM of a supported family and its tokenizer.
    recipe : Recipe or None
        Compression recipe, or ``None`` for the full cache.
    context, question : str
        The prompt is ``context + question``; in query-agnostic mode only ``context`` is compressed.
        Tokenised separately and concatenated, so both modes see the same tokens.
    mode : {"query-aware", "query-agnostic"}
        See the module docstring.
    max_new_tokens, min_new_tokens : int
        Generation length; set both to time a fixed number of decoding steps.
    prefill_chunk : int or None
        Prefill ``recipe``'s compressed part in chunks of this many tokens, compressing after each
        (``generate(prefill_chunk_size=...)`` query-aware, ``recipe.prefill(chunk_size=...)``
        query-agnostic); ``prefill_s`` and ``cache`` then cover every chunk. Ignored for the full
        cache (``recipe=None``), which is the unchunked reference.
    """
    from kvpress_lab.engine.prefill import forward_cache

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    device = next(model.parameters()).device
    context_ids = tokenizer(context, return_tensors="pt").input_ids.to(device)  # (1, Tc)
    question_ids = tokenizer(question, add_special_tokens=False, return_tensors="pt").input_ids.to(device)  # (1, Tq)
    full_ids = torch.cat([context_ids, question_ids], dim=-1)  # (1, T)
    options = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
                   attention_mask=torch.ones_like(full_ids), pad_token_id=tokenizer.pad_token_id)
    question_s = 0.0
    chunk = None if recipe is None else prefill_chunk
    if mode == "query-aware":
        forwards = 1 if chunk is None else -(-full_ids.shape[-1] // chunk)  # one forward per prefill chunk
        with ForwardTimer(model, prefill_forwards=forwards) as timer:
            if recipe is None:
                output = model.generate(full_ids, **options)
            else:
                with recipe.apply(model):
                    output = model.generate(full_ids, prefill_chunk_size=chunk, **options)
        prefill_s, steps, report = sum(timer.durations[:forwards]), timer.durations[forwards:], timer.first_cache
    else:
        _synchronize(device)
        start = time.perf_counter()
        if recipe is None:
            cache = forward_cache(model, context_ids)  # as recipe.prefill: the cache, the last logits only
        else:
            cache = recipe.prefill(model, context_ids, chunk_size=chunk)
        _synchronize(device)
        prefill_s, report = time.perf_counter() - start, cache_report(cache)
        # decoding-time compression runs inside the recipe's session (the prefill's hooks only read the cache)
        decoding = recipe.apply(model) if recipe is not None and recipe.decode_budget is not None else contextlib.nullcontext()
        with decoding, ForwardTimer(model) as timer:
            output = model.generate(full_ids, cache=copy.deepcopy(cache), **options)
        question_s, steps = timer.durations[0], timer.durations[1:]
    new = output[0, full_ids.shape[-1]:]
    return GenerationResult(
        text=tokenizer.decode(new, skip_special_tokens=True),
        prompt_tokens=int(full_ids.shape[-1]),
        prefill_s=prefill_s,
        question_s=question_s,
        decode_step_s=_mean(steps),
        kv_bytes=0 if report is None else report.total_bytes,
        new_tokens=int(new.numel()),
        cache=report,
    )
