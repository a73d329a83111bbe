"""Attach a recipe to a model: compress each full-attention layer's cache right after prefill."""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from kvpress_lab.budgets import BudgetPlan, check_forced_fit, plan_budgets
from kvpress_lab.cache_layers import check_layer
from kvpress_lab.engine.block_scoring import select_in_blocks
from kvpress_lab.engine.cache_checks import check_cache, check_generate_options, held_entries
from kvpress_lab.engine.chunking import ChunkedPrefill, check_chunkable
from kvpress_lab.engine.decoding import PaddingCapture, cache_from_kwargs, mark_compressed
from kvpress_lab.engine.generate_guard import GenerateCall
from kvpress_lab.engine.global_statistics import layer_statistic, ranks_scores
from kvpress_lab.engine.model_hooks import HookListener, ModelHooks, add_listener, remove_listener
from kvpress_lab.engine.post_prefill import needs_reconstruction, reconstruction_scores
from kvpress_lab.engine.query_capture import capture_queries
from kvpress_lab.errors import UnsupportedCacheError
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.padding import check_left_padding
from kvpress_lab.engine.per_head_chunks import heads_as_rows, rows_as_heads, select_per_head
from kvpress_lab.engine.recent_inputs import RecentInputs
from kvpress_lab.engine.rerotation import rerotate_kept_keys
from kvpress_lab.executors.two_stage import first_stage_entries
from kvpress_lab.engine.role_timers import RoleTimers, timers_for
from kvpress_lab.head_allocation import adaptive_head_budgets, safeguard_entries
from kvpress_lab.layer_view import LayerView
from kvpress_lab.protocols import Selection

if TYPE_CHECKING:
    from kvpress_lab.recipe import Recipe

__all__ = ["CompressionSession"]

_UNTIMED = contextlib.nullcontext()  # what _timed returns when role timing is off


@dataclass
class _ScoredLayer:
    """A layer scored during prefill, waiting for a global allocator's budgets."""

    idx: int
    cache: object
    keys: torch.Tensor  # (B, Hkv, T, D): what the scores index
    values: torch.Tensor  # (B, Hkv, T, D)
    scores: torch.Tensor  # (B, Hkv, T) float32
    forced: torch.Tensor  # (B, Hkv, T) bool
    valid: torch.Tensor  # (B, T) bool


class CompressionSession(HookListener):
    """Context manager returned by :meth:`Recipe.apply <kvpress_lab.Recipe.apply>`.

    Inside the ``with`` block every prefill the model runs (a forward pass that fills an empty
    cache, such as the first step of ``model.generate``) is compressed: after each full-attention
    layer's forward its entries are scored, budgeted and gathered, and the layer is replaced by a
    compressed one that keeps the true sequence length, so decoding continues at the right
    positions. With an allocator of scope ``"global"`` every layer is scored first and evicted
    after the last layer (the full cache of every layer is then held until the end of the
    prefill pass: the peak memory of uncompressed prefill, plus ``(B, Hkv, T)`` float32 scores
    per layer). All hooks are removed on exit, also after an exception.

    Compression is scoped to the thread that entered the block: another thread's calls on the same
    model run as if no recipe were applied, and other threads may apply recipes of their own to the
    same model meanwhile (each thread one at a time: a second ``with`` block in the same thread
    raises). The hooks are shared with every other user of the model
    (:mod:`kvpress_lab.engine.model_hooks`). What cannot be compressed is refused, never run uncompressed
    silently: ``use_cache=False``, a cache other than transformers' ``DynamicCache`` (static,
    quantized, offloaded). ``generate(..., prefill_chunk_size=C)`` compresses after every chunk
    (:mod:`kvpress_lab.engine.chunking`) when the recipe can, and is refused when it cannot. A
    session that is created but never entered (``recipe.apply(model)`` without ``with``) warns
    when it is discarded.

    Parameters
    ----------
    recipe : Recipe
        What to run.
    model : transformers.PreTrainedModel
        A loaded causal LM of a supported family.
    record_indices : bool
        Keep each layer's :class:`~kvpress_lab.protocols.Selection` of the last prefill in
        ``selections`` (for analysis and tests).
    timers : RoleTimers or None
        Add the time spent in each role (scoring, allocation, selection, gather) to these
        :class:`~kvpress_lab.engine.role_timers.RoleTimers`; ``None`` (default): untimed, unless
        the model is inside :func:`~kvpress_lab.engine.role_timers.time_roles`.

    Examples
    --------
    >>> with recipe.apply(model) as session:            # doctest: +SKIP
    ...     out = model.generate(input_ids, max_new_tokens=20)
    """

    def __init__(self, recipe: Recipe, model: nn.Module, *, record_indices: bool = False,
                 timers: RoleTimers | None = None):
        scope = recipe.strategies.allocator.scope
        if scope not in ("static", "global"):
            raise ValueError(f"Allocator {recipe.allocator!r} has scope {scope!r}; expected 'static' or 'global'.")
        self._entered = True  # until __init__ completes: nothing to warn about if construction fails
        self.recipe = recipe
        self.model = model
        self.adapter = ModelAdapter.for_model(model)  # fails here for unsupported families
        check_layers = getattr(recipe.strategies.allocator, "check_layers", None)
        if check_layers is not None:  # e.g. a learned profile fitted on a model with another depth
            check_layers(len(self.adapter.compressible))
        self.record_indices = record_indices
        self.timers = timers if timers is not None else timers_for(model, recipe)
        self.selections: dict[int, Selection] = {}
        self.accumulated_scores: dict[int, torch.Tensor] = {}  # (B, Hkv, held) per layer: chunked prefill, accumulating scorers
        self.plan: BudgetPlan | None = None
        self._reconstruct = needs_reconstruction(recipe.strategies.scorer)  # kvzip: scored by a pass after the prefill
        self._global = scope == "global" or self._reconstruct
        self._pending: list[_ScoredLayer] = []
        self._statistics: list[torch.Tensor] = []
        self._stage_one: dict[int, torch.Tensor] = {}  # layer -> (B, Hkv, T) stage-one scores (two-stage scorers)
        self._rotary: dict[int, tuple] = {}  # layer -> prefill (cos, sin), kept for Recipe.rerotate_keys
        self._ordinal = {idx: n for n, idx in enumerate(self.adapter.compressible)}
        self._capture_padding = PaddingCapture(self.adapter.decoder)
        self._padding: torch.Tensor | None = None  # (B, T) bool of the current forward, or None: no 2-D mask
        self._input_ids: torch.Tensor | None = None  # (B, T) ids of the current forward, None on embeddings
        self._position_ids: torch.Tensor | None = None  # (B or 1, T) position ids the current forward was given, or None
        self._hooks: ModelHooks | None = None  # while attached
        self._thread: int | None = None
        self._chunking: ChunkedPrefill | None = None
        self._recent = {idx: RecentInputs(recipe.window) for idx in self.adapter.compressible}  # decoding compression
        self._decode_steps = dict.fromkeys(self.adapter.compressible, 0)  # decoding forwards since the last cut ("every")
        self._decode_plan: BudgetPlan | None = None
        self._queries: dict[int, torch.Tensor] = {}  # layer -> (B, Hq, S, D) its attention call computed (query_capture)
        self._query_capture = contextlib.ExitStack()
        self._entered = False

    def __del__(self) -> None:
        if not getattr(self, "_entered", True):
            warnings.warn(
                "A kvpress_lab CompressionSession was created and discarded without being entered, so nothing was "
                "compressed: use `with recipe.apply(model): ...` (or call session.attach() / session.detach()).",
                RuntimeWarning,
                stacklevel=2,
            )

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> CompressionSession:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def attach(self) -> None:
        """Start compressing this thread's calls on the model; prefer the ``with`` form, which always detaches."""
        self._entered = True
        self._thread = threading.get_ident()
        self._hooks = add_listener(self.model, self, "`with recipe.apply(model)`")  # atomic: one session per thread
        try:
            if getattr(self.recipe.strategies.scorer, "reads_every_query", False):
                modules = {idx: self.adapter.attention[idx] for idx in self.adapter.compressible}
                self._query_capture.enter_context(capture_queries(modules, self._keep_queries))
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Stop compressing; the model's hooks go when their last user leaves."""
        self._query_capture.close()
        self._queries.clear()
        self._pending.clear()
        if self._hooks is not None:
            self._hooks = None
            remove_listener(self.model, self)

    @property
    def num_hooks(self) -> int:
        """Module hooks on the model while this session is attached (shared with the model's other users), else 0."""
        return 0 if self._hooks is None else self._hooks.num_hooks

    # -- what the model's hooks call in this session's thread ------------------------------

    def decoder_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._new_forward(module, args, kwargs)

    def decoder_post(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        self._end_forward(module, args, kwargs, output)

    def attention_post(self, idx: int, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        self._compress_layer(idx, module, args, kwargs, output)

    def check_generate(self, call: GenerateCall) -> None:
        self._check_generate(call)

    def applies_decoding_compression(self) -> bool:
        return self.recipe.decode_budget is not None

    # -- checks ----------------------------------------------------------------------------

    def _mine(self) -> bool:
        """Whether the running call belongs to this session (made in the thread that entered it)."""
        return threading.get_ident() == self._thread

    def _check_generate(self, call: GenerateCall) -> None:
        """Refuse ``generate`` options under which the prefill would not be compressed; arm chunked prefill."""
        if not self._mine():
            return
        chunk_size = check_generate_options(call, self.adapter.compressible)
        if chunk_size is not None:
            check_chunkable(self.recipe, chunk_size)
            ids, mask = call.input_ids, call.kwargs.get("attention_mask")
            expand = max(call.option("num_beams") or 1, call.option("num_return_sequences") or 1)
            if expand > 1:  # generate repeats every prompt row before the prefill (beams, sequences)
                ids, mask = ids.repeat_interleave(expand, dim=0), None if mask is None else mask.repeat_interleave(expand, dim=0)
            self.begin_chunked_prefill(ids, mask)

    def begin_chunked_prefill(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> None:
        """Announce that the next forwards prefill ``input_ids`` ``(B, T)`` in chunks (into an empty cache).

        Each chunk's forward is then compressed down to the budgets of the whole prompt; decoding
        forwards after the last chunk are left alone. Called by ``generate(prefill_chunk_size=...)``
        inside the block and by :func:`~kvpress_lab.engine.prefill.prefill` with ``chunk_size``.
        """
        check_chunkable(self.recipe)
        if attention_mask is None:
            valid = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        else:
            valid = check_left_padding(attention_mask)
        self._chunking = ChunkedPrefill(input_ids=input_ids.detach().cpu(), valid=valid)
        self.accumulated_scores.clear()

    def run_prefill_hooks(self, cache: object, inputs: dict[int, dict], input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> None:
        """Compress ``cache``, filled by a prefill that already ran, exactly as the hooks would have during it.

        ``inputs[idx]`` holds what full-attention layer ``idx`` received (``hidden_states`` and
        ``position_embeddings``). Used by :func:`~kvpress_lab.engine.shared_prefill.compress_many`
        to compress one prefill with several recipes; nothing is attached to the model.
        """
        self._entered = True
        if self._reconstruct:
            raise UnsupportedCacheError(
                f"Scorer {self.recipe.scorer!r} runs a reconstruction pass after the prefill, which a shared prefill "
                "(compress_many) does not replay; compress with this recipe alone (Recipe.prefill)."
            )
        self._thread = threading.get_ident()
        decoder = self.adapter.decoder
        self._new_forward(decoder, (), {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache})
        for idx in self.adapter.compressible:
            self._compress_layer(idx, self.adapter.attention[idx], (), {**inputs[idx], "cache": cache}, None)
        self._end_forward(decoder, (), {"cache": cache}, None)

    # -- hooks -----------------------------------------------------------------------------

    def _new_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._mine():
            return
        cache = cache_from_kwargs(kwargs)
        if cache is not None:  # refuse before the model runs (an offloaded cache prefetches layers first)
            check_cache(cache, self.adapter.compressible)
        self._padding = self._capture_padding(args, kwargs)
        self._input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._position_ids = kwargs.get("position_ids")  # (B, T) or None; where a reconstruction pass continues
        self._rotary.clear()  # rotary tables of this forward's prefill only (Recipe.rerotate_keys)
        self._stage_one.clear()  # stage-one scores of this forward's layers only (two-stage scorers)
        if self._chunking is not None and self._next_chunk(cache, kwargs):
            return  # one more chunk of the prompt: the plan of the whole prompt stays
        self.plan = None  # budgets depend on this forward's prompt; planned at its first layer
        self._decode_plan = None
        self._pending.clear()
        self._statistics.clear()

    def _keep_queries(self, idx: int, queries: torch.Tensor) -> None:
        if self._mine():
            self._queries[idx] = queries  # until this layer's forward hook: _compress_layer

    def _compress_layer(self, idx: int, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if not self._mine():
            return
        queries = self._queries.pop(idx, None)  # (B, Hq, S, D) of this call, when the scorer reads every query
        cache = cache_from_kwargs(kwargs)
        hidden = self.adapter.hidden_states(args, kwargs)
        length = hidden.shape[1]
        if cache is None:
            if length < 2:
                return  # a single-token forward without a cache has nothing to compress
            raise UnsupportedCacheError(
                f"{type(self.model).__name__} ran a {length}-token forward without a KV cache (use_cache=False?) inside "
                "`with recipe.apply(model)`: there is nothing to compress, and the run would be uncompressed. Call it "
                "with use_cache=True, or outside the block."
            )
        if self._chunking is not None:  # (the cache's layer types were checked when the decoder's forward began)
            self._compress_chunk(idx, kwargs, cache, hidden, queries)
            return
        if idx >= len(cache.layers):
            return
        layer = cache.layers[idx]
        if hasattr(layer, "prepare_decoding") or layer.get_seq_length() != length or length < 2:
            # not a prefill of an empty cache: a decoding step, or a prompt continuing a cache
            if self.recipe.decode_budget is not None:
                self._compress_decoding(idx, kwargs, cache, hidden)
            return
        self._recent[idx].reset()
        self._decode_steps[idx] = 0
        if self.recipe.decode_budget is not None:  # decoding-time compression scores with the latest inputs
            self._recent[idx].add(hidden, kwargs["position_embeddings"])
        if not self.recipe.compress_prefill:
            return
        valid = self._valid_mask(hidden, length)
        if self.recipe.rerotate_keys:
            self._rotary[idx] = kwargs.get("position_embeddings")
        if self._global:
            with self._timed("score"):
                view = self._prefill_view(idx, args, kwargs, layer, valid, queries)
                # a reconstruction scorer (kvzip) is scored after the prefill: _score_by_reconstruction
                scores, forced = (None, self._forced(view)) if self._reconstruct else self._score(view)
            with self._timed("allocate"):
                statistic = layer_statistic(self.recipe.strategies.allocator, view, scores, forced, valid)
            if statistic is not None:
                self._statistics.append(statistic)
            self._pending.append(_ScoredLayer(idx, cache, layer.keys, layer.values, scores, forced, valid))
            return
        if self.plan is None:
            self.plan = self._plan(valid)
        if not self.plan.evicts(self._ordinal[idx]) and not self._stores_every_layer():
            return
        if self.recipe.block_size is not None:  # kvpress's BlockPress: rescored block by block (engine/block_scoring)
            with self._timed("score"):
                view = self._prefill_view(idx, args, kwargs, layer, valid, queries)
                selection = select_in_blocks(self.recipe.strategies.scorer, view, self.plan.keep[:, self._ordinal[idx]],
                                             self.recipe.block_size, view.window)
            self._build(idx, cache, layer.keys, layer.values, selection)
            return
        with self._timed("score"):
            view = self._prefill_view(idx, args, kwargs, layer, valid, queries)
            scores, forced = self._score(view)
        self._evict(_ScoredLayer(idx, cache, layer.keys, layer.values, scores, forced, valid))

    def _prefill_view(self, idx: int, args: tuple, kwargs: dict, layer: object, valid: torch.Tensor,
                      queries: torch.Tensor | None) -> LayerView:
        """The view of a one-shot prefill's layer: every entry's input and position known."""
        length = layer.keys.shape[2]
        positions = self._position_ids
        if positions is None or positions.shape[-1] != length:  # the model counts from 0 in a prefill of an empty cache
            positions = torch.arange(length, device=layer.keys.device)[None]
        positions = positions.expand(valid.shape[0], -1)
        return self.adapter.layer_view_from_call(idx, args, kwargs, layer, valid, self.recipe.window, queries,
                                                 positions=positions)

    def _end_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if self._mine() and self._chunking is not None and self._chunking.stop >= self._chunking.total:
            self._chunking = None  # the last chunk ran: what follows is decoding
        if not self._mine() or not self._pending:
            return
        pending, self._pending = self._pending, []
        if self._reconstruct:
            self._score_by_reconstruction(pending)
        device = pending[0].scores.device
        statistics = torch.stack([s.to(device) for s in self._statistics], dim=1) if self._statistics else None  # (B, L, ...)
        self.plan = self._plan(pending[0].valid, statistics)
        for scored in pending:
            if self.plan.evicts(self._ordinal[scored.idx]) or self._stores_every_layer():
                self._evict(scored)

    # -- steps -----------------------------------------------------------------------------

    def _plan(self, valid: torch.Tensor, statistics: torch.Tensor | None = None) -> BudgetPlan:
        with self._timed("allocate"):
            real_lengths = [int(n) for n in valid.sum(dim=-1).tolist()]
            return plan_budgets(self.recipe.strategies.allocator, self.recipe.budget_spec, real_lengths,
                                len(self.adapter.compressible), self.adapter.num_kv_heads, statistics)

    def _stores_every_layer(self) -> bool:
        """The executor rebuilds layers that lose nothing (quantized storage): the prefill builds every one."""
        return bool(getattr(self.recipe.strategies.executor, "stores_every_layer", False))

    def _timed(self, role: str) -> contextlib.AbstractContextManager:
        """``self.timers.time(role)``, or a shared no-op context when timing is off."""
        return _UNTIMED if self.timers is None else self.timers.time(role)

    def _valid_mask(self, hidden: torch.Tensor, length: int) -> torch.Tensor:
        """``(B, T)`` bool padding of this prefill, from the mask the decoder received (all real when none)."""
        padding = self._padding
        if padding is None:
            return torch.ones(hidden.shape[0], length, dtype=torch.bool, device=hidden.device)
        if padding.shape != (hidden.shape[0], length):
            raise ValueError(
                f"attention_mask must be (batch, prompt_length)={(hidden.shape[0], length)} at prefill, got {tuple(padding.shape)}."
            )
        return check_left_padding(padding).to(hidden.device)

    # -- chunked prefill -------------------------------------------------------------------

    def _next_chunk(self, cache: object, kwargs: dict) -> bool:
        """Set the current chunk's token range; ``False`` once the whole prompt has been seen."""
        chunk = self._chunking
        past = 0 if cache is None else cache.get_seq_length()
        inputs = self._input_ids if self._input_ids is not None else kwargs.get("inputs_embeds")
        if past >= chunk.total or inputs is None:
            self._chunking = None
            return False
        chunk.start, chunk.stop = past, past + inputs.shape[1]
        if past == 0:
            self.plan = None
            self.accumulated_scores.clear()
        return True

    def _compress_chunk(self, idx: int, kwargs: dict, cache: object, hidden: torch.Tensor,
                        queries: torch.Tensor | None = None) -> None:
        """Cut layer ``idx`` back to the whole prompt's budget after one chunk's forward (``queries``: the chunk's, or ``None``)."""
        chunk = self._chunking
        if self.plan is None:
            self.plan = self._plan(chunk.valid)  # the whole prompt's budgets
        layer = cache.layers[idx]
        if hasattr(layer, "head_dense_entries"):  # per-head (ragged) layer: every head re-scored on its own entries
            self._compress_chunk_per_head(idx, kwargs, cache, hidden, layer, queries)
            return
        keys, values, valid = held_entries(layer, chunk.valid[:, : chunk.stop], "Chunked prefill")
        keep = torch.minimum(self.plan.keep[:, self._ordinal[idx]], valid.sum(dim=-1).cpu())
        self._recompress(idx, cache, keys, values, valid, keep, 0, hidden, kwargs["position_embeddings"],
                         tokens=chunk.tokens_so_far(), accumulate=self._accumulates(), queries=queries)

    def _accumulates(self) -> bool:
        """The scorer keeps running scores across chunks (``accumulates_scores``, e.g. ``h2o``)."""
        return bool(getattr(self.recipe.strategies.scorer, "accumulates_scores", False))

    def _compress_chunk_per_head(self, idx: int, kwargs: dict, cache: object, hidden: torch.Tensor, layer: object,
                                 queries: torch.Tensor | None = None) -> None:
        """A ragged layer after a chunk: score each head's held entries, split the budget, keep each head's best.

        The layer holds ``(B, Hkv, P)`` right-aligned entries, the chunk's ``C`` last in every head
        (:mod:`kvpress_lab.engine.per_head_chunks`). Padded new tokens (left padding) are never
        kept, and are always evicted here: a ragged layer stores no padding.
        """
        chunk = self._chunking
        keys, values, head_valid = layer.head_dense_entries()  # (B, Hkv, P, D), (B, Hkv, P)
        new = hidden.shape[1]
        held = keys.shape[2]
        head_valid = head_valid.clone()
        head_valid[..., held - new :] &= chunk.valid[:, chunk.start : chunk.stop].to(head_valid.device)[:, None, :]
        real = head_valid.sum(dim=-1).cpu()  # (B, Hkv)
        layer_keep = torch.minimum(self.plan.keep[:, self._ordinal[idx]], real.amax(dim=-1))  # (B,)
        heads = keys.shape[1]
        padded_new = not bool(chunk.valid[:, chunk.start : chunk.stop].all())
        over = bool((real.sum(dim=-1) > layer_keep * heads).any())
        accumulate = self._accumulates()
        if not (over or padded_new or accumulate):
            return  # within budget: the chunk's entries stay appended
        batch = keys.shape[0]
        with self._timed("score"):
            view = self.adapter.layer_view(idx, hidden, kwargs["position_embeddings"], keys, values,
                                           head_valid.any(dim=1), self.recipe.window, queries_from=held - new,
                                           queries=queries)
            rows = heads_as_rows(view, head_valid)
            scores, forced = self._score(rows, kept_window=min(self.recipe.window, held),
                                         chunk_start=held - new if accumulate else None)
        scores, forced = rows_as_heads(scores, batch), rows_as_heads(forced, batch)  # (B, Hkv, P)
        if not (over or padded_new):
            self.accumulated_scores[idx] = scores
            return
        selection = self._evict(_ScoredLayer(idx, cache, keys, values, scores, forced, head_valid), layer_keep=layer_keep,
                                tokens=chunk.tokens_so_far())
        if accumulate:
            self.accumulated_scores[idx] = _kept_scores(scores, selection)

    def _compress_decoding(self, idx: int, kwargs: dict, cache: object, hidden: torch.Tensor) -> None:
        """Cut layer ``idx`` back to its decoding budget once a row holds ``compress_every`` entries more.

        With ``decode_schedule="every"`` (kvpress's ``DecodingPress``): every ``compress_every`` decoding
        forwards instead, down to the budget when the layer holds more.
        """
        recent = self._recent[idx]
        recent.add(hidden, kwargs["position_embeddings"])
        slack = self.recipe.compress_every
        if self.recipe.decode_schedule == "every":  # kvpress's DecodingPress: a cut every N decoding forwards
            self._decode_steps[idx] += 1
            if self._decode_steps[idx] < self.recipe.compress_every:
                return
            self._decode_steps[idx], slack = 0, 0
        layer = cache.layers[idx]
        held = layer.keys.shape[2] if type(layer) is DynamicLayer else 0
        padding = self._padding
        all_valid = (padding[:, -held:] if padding is not None and padding.shape[-1] >= held
                     else torch.ones(hidden.shape[0], held, dtype=torch.bool, device=hidden.device))
        keys, values, valid = held_entries(layer, all_valid, "Decoding-time compression")
        if self._decode_plan is None:  # once per forward: budgets for the tokens seen so far
            lengths = ([layer.get_seq_length()] * hidden.shape[0] if padding is None
                       else [int(n) for n in padding.sum(dim=-1).tolist()])
            self._decode_plan = plan_budgets(self.recipe.strategies.allocator, self.recipe.decode_spec, lengths,
                                             len(self.adapter.compressible), self.adapter.num_kv_heads)
        keep = torch.minimum(self._decode_plan.keep[:, self._ordinal[idx]], valid.sum(dim=-1).cpu())
        self._recompress(idx, cache, keys, values, valid, keep, slack, recent.hidden, (recent.cos, recent.sin))

    def _recompress(self, idx, cache, keys, values, valid, keep, slack: int, hidden, position_embeddings, tokens=None,
                    accumulate: bool = False, queries: torch.Tensor | None = None) -> None:
        """Evict layer ``idx``'s held entries down to ``keep`` ``(B,)`` once some row holds ``keep + slack`` or more.

        ``hidden`` / ``position_embeddings`` are the inputs of the *last* held entries (a chunk, or the
        latest decoded tokens): the only queries a scorer gets. The last ``W`` entries stay. With
        ``accumulate`` (a chunked prefill, scorer with ``accumulates_scores``) the chunk's scores are
        added to the running scores of the held entries, every chunk, and the kept ones carried on.
        """
        real = valid.sum(dim=-1).cpu()  # (B,) entries held per row
        within = not bool((real >= keep + max(slack, 1)).any())
        if within and not accumulate:
            return  # within budget (+ slack)
        held = keys.shape[2]
        with self._timed("score"):
            view = self.adapter.layer_view(idx, hidden, position_embeddings, keys, values, valid, self.recipe.window,
                                           queries_from=held - hidden.shape[1], queries=queries)
            scores, forced = self._score(view, kept_window=min(self.recipe.window, held),
                                         chunk_start=held - hidden.shape[1] if accumulate else None)
        if within:
            self.accumulated_scores[idx] = scores
            return
        selection = self._evict(_ScoredLayer(idx, cache, keys, values, scores, forced, valid), layer_keep=keep, tokens=tokens)
        if accumulate:
            self.accumulated_scores[idx] = _kept_scores(scores, selection)

    def _score_by_reconstruction(self, pending: list[_ScoredLayer]) -> None:
        """Fill the pending layers' scores by the scorer's reconstruction pass (:mod:`~kvpress_lab.engine.post_prefill`)."""
        thread, self._thread = self._thread, None  # this session's hooks sit out the repeat forwards
        try:
            with self._timed("score"):
                scores = reconstruction_scores(self.model, self.adapter, self.recipe.strategies.scorer, pending[0].cache,
                                               self._input_ids, pending[0].valid, self._position_ids)
        finally:
            self._thread = thread
        allocator = self.recipe.strategies.allocator
        for scored in pending:
            scored.scores = scores[scored.idx]
            if ranks_scores(allocator):
                self._statistics.append(layer_statistic(allocator, None, scored.scores, scored.forced, scored.valid))

    def _score(self, view: LayerView, kept_window: int | None = None, chunk_start: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scorer = self.recipe.strategies.scorer
        staged = getattr(scorer, "staged_scores", None)  # two-stage scorers (CriticalKV): kvpress_lab.executors.two_stage
        if chunk_start is not None:  # accumulating scorer, chunked prefill: this chunk's share plus the running scores
            scores = self._accumulated(view, chunk_start)
        elif staged is None:
            scores = scorer.score(view)
        else:
            self._stage_one[view.layer_idx], scores = staged(view)
        expected = (view.batch_size, view.num_kv_heads, view.seq_len)
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"Scorer {scorer.name!r} returned scores of shape {got}, expected (B, Hkv, T)={expected}.")
        bad = ~torch.isfinite(scores) & view.valid[:, None, :]  # padding may score anything: it is never kept
        if bool(bad.any()):
            raise ValueError(
                f"Scorer {scorer.name!r} returned {int(bad.sum())} non-finite scores (NaN or inf) at layer {view.layer_idx}; "
                "scores must be finite (float16 overflow? compute scores in float32)."
            )
        return scores, self._forced(view, kept_window)

    def _accumulated(self, view: LayerView, chunk_start: int) -> torch.Tensor:
        """``(B, Hkv, T)``: ``score_chunk`` of the chunk's queries, plus the running scores of the entries held before it."""
        scores = self.recipe.strategies.scorer.score_chunk(view, chunk_start)
        carried = self.accumulated_scores.get(view.layer_idx)
        if carried is not None:
            carried = carried.reshape(scores.shape[0], scores.shape[1], -1)  # per-head layers score heads as rows
            if carried.shape[-1] != chunk_start:
                raise RuntimeError(f"internal error: {carried.shape[-1]} running scores for {chunk_start} held entries.")
            scores = scores.clone()
            scores[..., :chunk_start] += carried.to(scores.device)
        return scores

    def _forced(self, view: LayerView, kept_window: int | None = None) -> torch.Tensor:
        """``(B, Hkv, T)`` bool: the observation window and the scorer's forced entries (sinks)."""
        scorer = self.recipe.strategies.scorer
        positions = torch.arange(view.seq_len, device=view.device)
        window = view.window if kept_window is None else kept_window  # a chunk may hold fewer queries than W
        forced = (positions >= view.seq_len - window).expand(view.batch_size, view.num_kv_heads, -1)
        extra = getattr(scorer, "forced_keep", None)
        extra = extra(view) if extra is not None else None
        return forced if extra is None else forced | extra

    def _evict(self, scored: _ScoredLayer, layer_keep: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> Selection:
        strategies = self.recipe.strategies
        head_keep = None
        if layer_keep is None:
            layer_keep = self.plan.keep[:, self._ordinal[scored.idx]]  # (B,) on the CPU
            if self.plan.head_keep is not None:  # a per-head allocator decided every head's count
                head_keep = self.plan.head_keep[:, self._ordinal[scored.idx]]  # (B, Hkv)
        with self._timed("allocate"):
            per_head = scored.valid.dim() == 3  # (B, Hkv, T): a ragged layer's held entries (chunked prefill)
            forced = scored.forced & (scored.valid if per_head else scored.valid[:, None, :])
            check_forced_fit(forced.sum(dim=-1), layer_keep[:, None] if head_keep is None else head_keep)
            first = self._stage_one.pop(scored.idx, None)  # (B, Hkv, T) stage-one scores of a two-stage scorer
            if head_keep is not None:
                keep = head_keep
            elif self.recipe.head_allocation == "adaptive":
                split_on = first if first is not None and getattr(strategies.scorer, "split_heads_on", "refined") == "base" \
                    else scored.scores
                keep = adaptive_head_budgets(split_on, layer_keep, forced, scored.valid, self.recipe.head_floor,
                                             self.recipe.head_floor_rule)
                if split_on is first and self.recipe.head_floor_rule == "kvpress":  # kvpress keeps the safeguard outright
                    forced = forced | safeguard_entries(first, layer_keep, forced, scored.valid, self.recipe.head_floor)
            else:
                keep = layer_keep[:, None].expand(-1, scored.scores.shape[1]).contiguous()  # (B, Hkv)
                if per_head:
                    keep = torch.minimum(keep, scored.valid.sum(dim=-1).cpu())
            if first is not None:  # two-stage selection: stage one's winners are kept, the executor fills the rest
                forced = first_stage_entries(first, keep, forced, scored.valid, strategies.scorer.first_stage_ratio)
        with self._timed("select"):
            if per_head:
                selection = select_per_head(strategies.executor, scored.scores, keep, forced, scored.valid)
            else:
                selection = strategies.executor.select(scored.scores, keep, forced, scored.valid)
        return self._build(scored.idx, scored.cache, scored.keys, scored.values, selection, tokens)

    def _build(self, idx: int, cache: object, keys: torch.Tensor, values: torch.Tensor, selection: Selection,
               tokens: torch.Tensor | None = None) -> Selection:
        """Replace layer ``idx`` of ``cache`` by the executor's layer of the ``selection`` of ``keys`` / ``values``."""
        strategies = self.recipe.strategies
        layer = cache.layers[idx]
        if self.recipe.rerotate_keys:  # kept keys to contiguous positions (kvpress_lab.engine.rerotation)
            rotary = self._rotary.pop(idx, None)
            if rotary is None:
                raise UnsupportedCacheError(
                    "Recipe.rerotate_keys re-rotates the keys of a one-pass prefill only; this layer is re-compressed from "
                    "held entries (chunked prefill or decoding-time compression), or its model passes no rotary tables."
                )
            keys = rerotate_kept_keys(keys, selection, rotary)
        with self._timed("gather"):
            built = strategies.executor.build_layer(keys, values, selection, layer.get_seq_length())
            check_layer(built, strategies.executor.name)
        cache.layers[idx] = built
        mark_compressed(cache, self._input_ids if tokens is None else tokens)
        if self.record_indices:
            self.selections[idx] = selection
        return selection


def _kept_scores(scores: torch.Tensor, selection: Selection) -> torch.Tensor:
    """``(B, Hkv, K)`` scores of the kept entries, in the kept layer's slot order (0 on filler slots)."""
    return scores.gather(-1, selection.indices.to(scores.device)).masked_fill(~selection.valid.to(scores.device), 0.0)
