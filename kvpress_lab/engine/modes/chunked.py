"""Chunked prefill: every layer is cut back to the whole prompt's budget after each chunk.

Armed by ``generate(..., prefill_chunk_size=C)`` inside the block
(its ``check_generate``) or by :func:`~kvpress_lab.engine.prefill.prefill` with
``chunk_size`` (:meth:`ChunkedPrefillMode.arm`); what can be
chunked, and why, is :mod:`kvpress_lab.engine.chunking`. Dense layers are re-compressed from
their held entries (:func:`~kvpress_lab.engine.recompression.recompress`); per-head (ragged)
layers score and cut every head on its own entries (:mod:`kvpress_lab.engine.per_head_chunks`).
An accumulating scorer (``h2o``) keeps running scores per layer in the session's
``accumulated_scores``: the chunk's share is added to the held entries' scores, the kept ones
are carried on.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from kvpress_lab.capabilities import CACHE_LAYER, SCORER
from kvpress_lab.engine.chunking import ChunkedPrefill, check_chunkable
from kvpress_lab.engine.eviction import ScoredLayer, Scores, evict, kept_scores, score
from kvpress_lab.engine.generate_guard import GenerateCall
from kvpress_lab.engine.layer_call import ForwardInputs, LayerCall
from kvpress_lab.engine.modes.base import EngineMode, ModeContext
from kvpress_lab.engine.padding import check_left_padding
from kvpress_lab.engine.per_head_chunks import heads_as_rows, rows_as_heads
from kvpress_lab.engine.planning import BudgetPlan
from kvpress_lab.engine.recompression import LatestInputs, held_entries, recompress
from kvpress_lab.layer_view import LayerView

__all__ = ["ChunkedPrefillMode"]


class ChunkedPrefillMode(EngineMode):
    """The chunked prefill a session runs, once armed: chunk range, the whole prompt's plan, running scores."""

    name: ClassVar[str] = "chunked"

    def __init__(self, context: ModeContext):
        super().__init__(context)
        self.chunk: ChunkedPrefill | None = None
        self.plan: BudgetPlan | None = None
        self.accumulates = bool(SCORER.of(context.eviction.scorer, "accumulates_scores"))
        self.running = context.record.accumulated_scores  # layer -> (B, Hkv, held) running scores

    def arm(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> None:
        """The next forwards prefill ``input_ids`` ``(B, T)`` in chunks (into an empty cache)."""
        check_chunkable(self.context.recipe)
        if attention_mask is None:
            valid = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        else:
            valid = check_left_padding(attention_mask)
        self.chunk = ChunkedPrefill(input_ids=input_ids.detach().cpu(), valid=valid)
        self.running.clear()

    def check_generate(self, call: GenerateCall) -> None:
        chunk_size = call.option("prefill_chunk_size")
        if chunk_size is None:
            return
        check_chunkable(self.context.recipe, chunk_size)
        ids, mask = call.input_ids, call.kwargs.get("attention_mask")
        expand = max(call.option("num_beams") or 1, call.option("num_return_sequences") or 1)
        if expand > 1:  # generate repeats every prompt row before the prefill (beams, sequences)
            ids, mask = ids.repeat_interleave(expand, dim=0), None if mask is None else mask.repeat_interleave(expand, dim=0)
        self.arm(ids, mask)

    def begin_forward(self, forward: ForwardInputs) -> None:
        chunk = self.chunk
        if chunk is None:
            return
        past = 0 if forward.cache is None else forward.cache.get_seq_length()
        if past >= chunk.total or forward.new_tokens is None:
            self.chunk = None  # the whole prompt has been seen
            return
        chunk.start, chunk.stop = past, past + forward.new_tokens
        if past == 0:
            self.plan = None
            self.running.clear()

    def compress(self, call: LayerCall) -> bool:
        chunk = self.chunk
        if chunk is None:
            return False
        if self.plan is None:
            self.plan = self.context.record.plan = self.context.plan(chunk.valid)  # the whole prompt's budgets
        layer = call.layer
        if CACHE_LAYER.of(layer, "head_dense_entries") is not None:  # ragged: every head re-scored on its own entries
            self._compress_per_head(call, layer)
            return True
        keys, values, valid = held_entries(layer, chunk.valid[:, : chunk.stop], "Chunked prefill")
        keep = torch.minimum(self.plan.keep[:, self.context.ordinal(call.idx)], valid.sum(dim=-1).cpu())
        held = ScoredLayer(call.idx, call.cache, keys, values, valid, tokens=chunk.tokens_so_far())
        start = keys.shape[2] - call.length
        compute = (lambda view: self._accumulated(view, start)) if self.accumulates else None
        scores, selection = recompress(self.context.eviction, self.context.adapter, held, keep,
                                       LatestInputs(call.hidden, call.position_embeddings, call.queries), compute=compute)
        self._carry(call.idx, scores, selection)
        return True

    def end_forward(self, forward: ForwardInputs) -> None:
        if self.chunk is not None and self.chunk.stop >= self.chunk.total:
            self.chunk = None  # the last chunk ran: what follows is decoding

    def _carry(self, idx: int, scores: torch.Tensor | None, selection: object) -> None:
        """Keep the running scores of the entries the layer holds now (accumulating scorers)."""
        if not self.accumulates or scores is None:
            return
        self.running[idx] = scores if selection is None else kept_scores(scores, selection)

    def _accumulated(self, view: LayerView, chunk_start: int) -> torch.Tensor:
        """``(B, Hkv, T)``: ``score_chunk`` of the chunk's queries, plus the running scores of the entries held before it."""
        scores = self.context.eviction.scorer.score_chunk(view, chunk_start)
        carried = self.running.get(view.layer_idx)
        if carried is not None:
            carried = carried.reshape(scores.shape[0], scores.shape[1], -1)  # per-head layers score heads as rows
            if carried.shape[-1] != chunk_start:
                raise RuntimeError(f"internal error: {carried.shape[-1]} running scores for {chunk_start} held entries.")
            scores = scores.clone()
            scores[..., :chunk_start] += carried.to(scores.device)
        return scores

    def _compress_per_head(self, call: LayerCall, layer: object) -> None:
        """A ragged layer after a chunk: score each head's held entries, split the budget, keep each head's best.

        The layer holds ``(B, Hkv, P)`` right-aligned entries, the chunk's ``C`` last in every head
        (:mod:`kvpress_lab.engine.per_head_chunks`). Padded new tokens (left padding) are never
        kept, and are always evicted here: a ragged layer stores no padding.
        """
        chunk, context = self.chunk, self.context
        keys, values, head_valid = layer.head_dense_entries()  # (B, Hkv, P, D), (B, Hkv, P)
        held, new = keys.shape[2], call.length
        head_valid = head_valid.clone()
        head_valid[..., held - new :] &= chunk.valid[:, chunk.start : chunk.stop].to(head_valid.device)[:, None, :]
        real = head_valid.sum(dim=-1).cpu()  # (B, Hkv)
        layer_keep = torch.minimum(self.plan.keep[:, context.ordinal(call.idx)], real.amax(dim=-1))  # (B,)
        padded_new = not bool(chunk.valid[:, chunk.start : chunk.stop].all())
        over = bool((real.sum(dim=-1) > layer_keep * keys.shape[1]).any())
        if not (over or padded_new or self.accumulates):
            return  # within budget: the chunk's entries stay appended
        batch, window = keys.shape[0], context.eviction.window
        compute = (lambda view: self._accumulated(view, held - new)) if self.accumulates else None
        with context.eviction.timed("score"):
            view = call.recent_view(context.adapter, keys, values, head_valid.any(dim=1), window, queries=call.queries)
            rows = score(context.eviction, heads_as_rows(view, head_valid), kept_window=min(window, held), compute=compute)
        scored = Scores(rows_as_heads(rows.scores, batch), rows_as_heads(rows.forced, batch),
                        None if rows.first is None else rows_as_heads(rows.first, batch))  # (B, Hkv, P)
        selection = None
        if over or padded_new:
            target = ScoredLayer(call.idx, call.cache, keys, values, head_valid, scored, tokens=chunk.tokens_so_far())
            selection = evict(context.eviction, target, layer_keep)
        self._carry(call.idx, scored.scores, selection)
