"""A sweep runner that runs each sample's unfinished cells together, on one shared prefill.

:func:`~kvpress_lab.benchmarks.sweep.run_sweep` asks a runner with a ``plan`` method to order its
cells: :class:`SampleGroups` puts them sample-major (the samples in grid order, each sample's
cells in grid order), and when it is asked for the first cell of a sample it starts
:func:`~kvpress_lab.benchmarks.shared_generation.generate_answers` on every cell of that sample
still to run in this shard. That prefills the prompt once per group of at most ``share`` recipes;
each cell then decodes from its own cache and is returned (hence appended to the result file) as
soon as it is done. Resuming and ``--shard`` work as before: a cell is still the unit that is
skipped, run and written, and its row equals the row of a run without sharing except for the
timing fields (``prefill_s``, ``decode_step_s``, ``shared_prefill``; see
:mod:`~kvpress_lab.benchmarks.shared_generation`).

Ratio cells (``--ratios``) sit beside budget cells: see :class:`~kvpress_lab.recipe_labels.CacheSize`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvpress_lab.benchmarks.generation import GenerationResult, generate_answer
from kvpress_lab.benchmarks.shared_generation import DEFAULT_SHARE, generate_answers
from kvpress_lab.benchmarks.sweep import Cell

__all__ = ["SamplePrompt", "SampleGroups", "share_prefill"]


def share_prefill(args: Any) -> int | None:
    """Recipes per shared prefill from ``--share-prefill N`` / ``--no-share-prefill`` (``None``: no sharing).

    Raises
    ------
    UsageError
        ``--share-prefill N`` (N > 1) with ``--prefill-chunk``: a shared prefill is one pass, a
        chunked one is not, so the sharing asked for could not happen. (Without ``--share-prefill``,
        chunked cells simply prefill alone.)
    """
    if getattr(args, "no_share_prefill", False):
        return None
    share = getattr(args, "share_prefill", None)
    chunk = getattr(args, "prefill_chunk", None)
    if share is not None and share > 1 and chunk is not None:
        from kvpress_lab.benchmarks.input_errors import UsageError

        raise UsageError(f"--share-prefill {share} compresses several recipes from one one-pass prefill, but --prefill-chunk "
                         f"{chunk} prefills every cell in chunks of its own; drop one of them.")
    return DEFAULT_SHARE if share is None else (None if share <= 1 else share)


@dataclass(frozen=True)
class SamplePrompt:
    """What one sample asks: ``context + question``, greedy-decoded for at most ``max_new_tokens``."""

    context: str
    question: str
    max_new_tokens: int


class SampleGroups:
    """``run_sweep`` runner sharing each sample's prefill across its cells (see the module docstring).

    Parameters
    ----------
    model, tokenizer
        The loaded model.
    entries : Mapping
        ``(recipe label, CacheSize) -> Recipe or None`` for every cell.
    samples : Mapping
        Sample key -> the task's spec of that sample.
    prompt_of : Callable[[tokenizer, spec], SamplePrompt]
        Builds a sample's prompt (once per sample).
    row_of : Callable[[spec, SamplePrompt, GenerationResult], dict]
        The task's result fields of one cell.
    mode : {"query-aware", "query-agnostic"}
        Evaluation mode.
    share : int or None
        Recipes per shared prefill (``None`` or 1: every cell prefills alone).
    prefill_chunk : int or None
        Chunked prefill (``--prefill-chunk``): cells then prefill alone, since a shared pass is one-shot.
    """

    def __init__(self, model: Any, tokenizer: Any, entries: Mapping[tuple[str, Any], Any], samples: Mapping[str, Any],
                 prompt_of: Callable[[Any, Any], SamplePrompt],
                 row_of: Callable[[Any, SamplePrompt, GenerationResult], dict[str, Any]],
                 *, mode: str = "query-aware", share: int | None = DEFAULT_SHARE, prefill_chunk: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.entries, self.samples = entries, samples
        self.prompt_of, self.row_of = prompt_of, row_of
        self.mode = mode
        self.share = None if prefill_chunk is not None else share
        self.prefill_chunk = prefill_chunk
        self._prompts: dict[str, SamplePrompt] = {}
        self._queued: dict[str, list[Cell]] = {}  # sample -> its cells still to run, in order
        self._stream: Iterator[tuple[int, GenerationResult]] | None = None
        self._stream_cells: list[Cell] = []

    def plan(self, todo: Sequence[Cell]) -> list[Cell]:
        """``todo`` sample-major (samples in first-seen order, cells in order within each)."""
        self._queued = {}
        for cell in todo:
            self._queued.setdefault(cell.sample, []).append(cell)
        return [cell for cells in self._queued.values() for cell in cells]

    def prompt(self, sample: str) -> SamplePrompt:
        """The (cached) prompt of ``sample``."""
        if sample not in self._prompts:
            self._prompts[sample] = self.prompt_of(self.tokenizer, self.samples[sample])
        return self._prompts[sample]

    def warm_up(self, todo: Sequence[Cell]) -> float | None:
        """One full-cache generation (2 tokens) on the first sample of ``todo``, untimed in any row; its seconds.

        The first forward of a process pays for memory allocation and kernel selection; without
        this, that cost lands in the first cell's ``prefill_s``. ``None`` when ``todo`` is empty.
        """
        if not todo:
            return None
        prompt = self.prompt(todo[0].sample)
        start = time.perf_counter()
        generate_answer(self.model, self.tokenizer, None, prompt.context, prompt.question, mode=self.mode, max_new_tokens=2)
        return time.perf_counter() - start

    def __call__(self, cell: Cell) -> dict[str, Any]:
        result = self._next_result(cell)
        prompt = self.prompt(cell.sample)
        return {**self.row_of(self.samples[cell.sample], prompt, result), "shared_prefill": result.shared}

    def _next_result(self, cell: Cell) -> GenerationResult:
        if not self._stream_cells or self._stream_cells[0] != cell:  # a new sample (or an order we did not plan)
            queued = self._queued.get(cell.sample, [])
            group = queued[queued.index(cell):] if cell in queued else [cell]
            prompt = self.prompt(cell.sample)
            recipes = [self.entries[(c.recipe, c.size)] for c in group]
            if self.prefill_chunk is not None:
                self._stream = ((i, generate_answer(self.model, self.tokenizer, r, prompt.context, prompt.question,
                                                    mode=self.mode, max_new_tokens=prompt.max_new_tokens,
                                                    prefill_chunk=self.prefill_chunk)) for i, r in enumerate(recipes))
            else:
                self._stream = generate_answers(self.model, self.tokenizer, recipes, prompt.context, prompt.question,
                                                mode=self.mode, max_new_tokens=prompt.max_new_tokens, share=self.share)
            self._stream_cells = list(group)
        index, result = next(self._stream)
        if self._stream_cells[0] != cell:  # pragma: no cover - generate_answers yields in order
            print(f"warning: shared prefill returned cell {index} out of order", file=sys.stderr)
        self._stream_cells.pop(0)
        return result
