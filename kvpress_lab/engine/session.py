"""Attach a recipe to a model: compress each full-attention layer's cache right after prefill."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from kvpress_lab.capabilities import ALLOCATOR, SCORER
from kvpress_lab.engine.cache_checks import check_cache, check_generate_options
from kvpress_lab.engine.eviction import EvictionContext
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.generate_guard import GenerateCall
from kvpress_lab.engine.layer_call import ForwardInputs, LayerCall
from kvpress_lab.engine.model_hooks import HookListener, ModelHooks, add_listener, remove_listener
from kvpress_lab.engine.modes import ENGINE_MODES, EngineMode, ModeContext, SessionRecord
from kvpress_lab.engine.planning import BudgetPlan
from kvpress_lab.engine.query_capture import KeptQueries
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.engine.role_timers import RoleTimers, timers_for
from kvpress_lab.errors import UnsupportedCacheError
from kvpress_lab.protocols import Selection

__all__ = ["CompressionSession"]


class CompressionSession:
    """Context manager returned by :meth:`Recipe.apply <kvpress_lab.Recipe.apply>`.

    Inside the ``with`` block every prefill the model runs (a forward pass that fills an empty
    cache, such as the first step of ``model.generate``) is compressed: after each full-attention
    layer's forward its entries are scored, budgeted and gathered, and the layer is replaced by a
    compressed one that keeps the true sequence length, so decoding continues at the right
    positions. With an allocator of scope ``"global"`` every layer is scored first and evicted
    after the last layer (the full cache of every layer is then held until the end of the
    prefill pass: the peak memory of uncompressed prefill, plus ``(B, Hkv, T)`` float32 scores
    per layer). All hooks are removed on exit, also after an exception.

    How a layer is compressed is the business of the engine's modes
    (:mod:`kvpress_lab.engine.modes`: one-shot, chunked, deferred, block-wise, decoding-time);
    the session owns the hooks' lifecycle and the thread scope, and hands each forward and each
    layer call (:mod:`kvpress_lab.engine.layer_call`) to the modes of its recipe.

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

    def __init__(self, recipe: EngineRecipe, model: nn.Module, *, record_indices: bool = False,
                 timers: RoleTimers | None = None):
        allocator = recipe.strategies.allocator
        if allocator.scope not in ("static", "global"):
            raise ValueError(f"Allocator {recipe.allocator!r} has scope {allocator.scope!r}; expected 'static' or 'global'.")
        self._entered = True  # until __init__ completes: nothing to warn about if construction fails
        self.recipe = recipe
        self.model = model
        self.adapter = ModelAdapter.for_model(model)  # fails here for unsupported families
        check_layers = ALLOCATOR.of(allocator, "check_layers")
        if check_layers is not None:  # e.g. a learned profile fitted on a model with another depth
            check_layers(len(self.adapter.compressible))
        self.record_indices = record_indices
        self.timers = timers if timers is not None else timers_for(model, recipe)
        self._record = SessionRecord()
        self.selections: dict[int, Selection] = self._record.selections  # layer -> last Selection (record_indices)
        self.accumulated_scores: dict[int, torch.Tensor] = self._record.accumulated_scores  # chunked prefill, accumulating scorers
        eviction = EvictionContext.from_recipe(recipe, self.timers, self._record.selections if record_indices else None)
        context = ModeContext(model, self.adapter, recipe, eviction, self._record)
        #: The engine modes this recipe runs, in the order each layer call is offered to them.
        self.modes: list[EngineMode] = [mode(context) for mode in ENGINE_MODES if mode.applies(recipe)]
        self._forward: ForwardInputs | None = None  # the decoder's forward in progress (this thread's)
        self._hooks: ModelHooks | None = None  # while attached
        self._listener = _HookCalls(self)
        reads_every_query = SCORER.of(recipe.strategies.scorer, "reads_every_query")
        self._queries = KeptQueries({i: self.adapter.attention[i] for i in self.adapter.compressible}) \
            if reads_every_query else None
        self._entered = False

    def __del__(self) -> None:
        if not self.__dict__.get("_entered", True):
            warnings.warn(
                "A kvpress_lab CompressionSession was created and discarded without being entered, so nothing was "
                "compressed: use `with recipe.apply(model): ...` (or call session.attach() / session.detach()).",
                RuntimeWarning,
                stacklevel=2,
            )

    # -- what the modes report (also ``selections`` and ``accumulated_scores``) ---------------

    @property
    def plan(self) -> BudgetPlan | None:
        """The last prefill's :class:`~kvpress_lab.engine.planning.BudgetPlan` (``None`` before one ran)."""
        return self._record.plan

    def mode(self, name: str) -> EngineMode:
        """The session's mode ``name`` (:mod:`kvpress_lab.engine.modes`); ``KeyError`` when it does not run one."""
        for mode in self.modes:
            if mode.name == name:
                return mode
        raise KeyError(f"This session runs no engine mode {name!r}; it runs {[m.name for m in self.modes]}.")

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> CompressionSession:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def attach(self) -> None:
        """Start compressing this thread's calls on the model; prefer the ``with`` form, which always detaches."""
        self._entered = True
        self._hooks = add_listener(self.model, self._listener, "`with recipe.apply(model)`")  # atomic: one per thread
        try:
            if self._queries is not None:
                self._queries.start()
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Stop compressing; the model's hooks go when their last user leaves."""
        if self._queries is not None:
            self._queries.stop()
        for mode in self.modes:
            mode.detach()
        self._forward = None
        if self._hooks is not None:
            self._hooks = None
            remove_listener(self.model, self._listener)

    @property
    def num_hooks(self) -> int:
        """Module hooks on the model while this session is attached (shared with the model's other users), else 0."""
        return 0 if self._hooks is None else self._hooks.num_hooks

    # -- the one way in: generate's options, a forward, its layers' calls, its end -------------

    def check_generate(self, call: GenerateCall) -> None:
        """Refuse ``generate`` options under which the prefill would not be compressed; let the modes arm."""
        check_generate_options(call, self.adapter.compressible)
        for mode in self.modes:
            mode.check_generate(call)

    def begin_chunked_prefill(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> None:
        """Announce that the next forwards prefill ``input_ids`` ``(B, T)`` in chunks (into an empty cache).

        Each chunk's forward is then compressed down to the budgets of the whole prompt; decoding
        forwards after the last chunk are left alone (:mod:`kvpress_lab.engine.modes.chunked`).
        Called by ``generate(prefill_chunk_size=...)`` inside the block and by
        :func:`~kvpress_lab.engine.prefill.prefill` with ``chunk_size``.
        """
        self.mode("chunked").arm(input_ids, attention_mask)

    def begin_forward(self, forward: ForwardInputs) -> None:
        """A decoder forward begins: refuse a cache that cannot be compressed, tell the modes."""
        if forward.cache is not None:  # refuse before the model runs (an offloaded cache prefetches layers first)
            check_cache(forward.cache, self.adapter.compressible)
        self._forward = forward
        for mode in self.modes:
            mode.begin_forward(forward)

    def compress_layer(self, call: LayerCall) -> None:
        """Compress what full-attention layer ``call.idx`` just wrote, as the first mode that handles it decides."""
        if call.cache is None:
            if call.length < 2:
                return  # a single-token forward without a cache has nothing to compress
            raise UnsupportedCacheError(
                f"{type(self.model).__name__} ran a {call.length}-token forward without a KV cache (use_cache=False?) "
                "inside `with recipe.apply(model)`: there is nothing to compress, and the run would be uncompressed. "
                "Call it with use_cache=True, or outside the block."
            )
        for mode in self.modes:
            if mode.compress(call):
                return

    def end_forward(self) -> None:
        """The decoder forward ended: deferred work runs (global allocation, reconstruction)."""
        forward, self._forward = self._forward, None
        if forward is not None:
            for mode in self.modes:
                mode.end_forward(forward)

    def replay_prefill(self, forward: ForwardInputs, calls: list[LayerCall]) -> None:
        """Compress ``forward.cache``, filled by a prefill that already ran, exactly as the hooks would have during it.

        ``calls`` hold what each full-attention layer received. Used by
        :func:`~kvpress_lab.engine.shared_prefill.compress_many` to compress one prefill with
        several recipes; nothing is attached to the model.
        """
        self._entered = True
        self.begin_forward(forward)
        for call in calls:
            self.compress_layer(call)
        self.end_forward()


class _HookCalls(HookListener):
    """What the model's hooks hand a session (in its thread only: :mod:`~kvpress_lab.engine.model_hooks`
    dispatches per thread), as the session's forwards and layer calls."""

    def __init__(self, session: CompressionSession):
        self.session = session

    def decoder_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        session = self.session
        session.begin_forward(ForwardInputs.from_decoder_call(args, kwargs, session._hooks.decoding.padding_mask))

    def decoder_post(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        self.session.end_forward()

    def attention_post(self, idx: int, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        session = self.session
        queries = None if session._queries is None else session._queries.pop(idx)  # (B, Hq, S, D), when captured
        session.compress_layer(LayerCall.from_attention_call(idx, args, kwargs, session._forward, queries))

    def check_generate(self, call: GenerateCall) -> None:
        self.session.check_generate(call)

    def applies_decoding_compression(self) -> bool:
        return self.session.recipe.decode_budget is not None
