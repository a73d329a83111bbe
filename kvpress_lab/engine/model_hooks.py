"""The one owner of kvpress_lab's hooks on a model: registered once, shared by every thread that uses it.

Every kvpress_lab feature that acts on a model's forward passes goes through one
:class:`ModelHooks` per model: the decoding hooks (a compressed cache needs a mask per layer),
the compression session of ``with recipe.apply(model)``, the input capture of
:func:`~kvpress_lab.engine.shared_prefill.compress_many`, and the check run before
``model.generate``. Its hooks are registered when the model's first *user* arrives and removed
when the last one leaves; each call is dispatched to the decoding logic (every thread) and to the
:class:`HookListener` of the thread that makes it (nobody else's).

Why one owner
-------------
*Registration under concurrency.* torch registers a keyword-argument hook in two statements: the
hook goes into ``module._forward_pre_hooks`` and is then flagged in
``_forward_pre_hooks_with_kwargs`` (likewise for forward hooks). A forward running in another
thread between the two calls the hook *without* its keyword arguments: when every session
registered its own hooks, concurrent ``ask`` calls crashed that way
(``_new_forward() missing 1 required positional argument: 'kwargs'``). Here registration happens
only when a model goes from no user to one, under a lock every user takes before its first
forward; so a forward that meets a half-registered hook runs in a thread that does not use
kvpress_lab on this model, and every hook called without its keyword arguments does nothing,
which is exactly what that forward must get. (Removal deletes the hook before its flag, so it is
never half-visible.)

*Sessions per thread.* Dispatching by thread lets several threads each run their own session on
one model at the same time; within a thread, one listener at a time (a second ``with`` block, or
``compress_many`` inside one, is refused).

*Copies.* The owner, its hooks (bound methods) and the generate guard are plain objects referenced
from the model, with no lock or thread-local state, so ``copy.deepcopy(model)`` and
``torch.save(model)`` copy them along, bound to the copy. A copy keeps the decoding hooks (so copied
compressed caches decode correctly on it; :func:`disable_compressed_decoding`
removes them) and never a session: a session belongs to the thread and the ``with`` block that
entered it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

from torch import nn

from kvpress_lab.cache_layers.protocol import VarlenKernel
from kvpress_lab.engine.decoding import DecodingHooks, cache_from_kwargs, check_decoding_compression
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.generate_guard import GenerateCall, GuardedGenerate

__all__ = ["HookListener", "ModelHooks", "model_hooks", "hooks_in_use", "add_listener", "remove_listener", "thread_listener",
           "enable_compressed_decoding", "disable_compressed_decoding", "persistent_hooks"]

_ATTR = "_kvpress_lab_hooks"
_LOCK = threading.RLock()  # module-level, not on the model: a lock cannot be copied or pickled
_NO_KWARGS = object()  # a hook called without its keyword arguments (a forward racing the registration)


class HookListener:
    """What a thread's listener receives; every method defaults to doing nothing.

    A :class:`~kvpress_lab.engine.session.CompressionSession` has one; so has the input capture of
    ``compress_many``. Methods run in the listener's thread only.
    """

    def decoder_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the decoder's forward (``model.model``)."""

    def decoder_post(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        """After the decoder's forward."""

    def attention_pre(self, idx: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before full-attention layer ``idx``'s forward (after the decoding hooks set its mask)."""

    def attention_post(self, idx: int, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        """After full-attention layer ``idx``'s forward."""

    def check_generate(self, call: GenerateCall) -> None:
        """Before ``model.generate`` runs (raise to refuse the call)."""

    def applies_decoding_compression(self) -> bool:
        """Whether this listener compresses the cache while decoding (a recipe with ``decode_budget``)."""
        return False


class ModelHooks:
    """The hooks kvpress_lab keeps on one model, and who uses them.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a supported family.
    adapter : ModelAdapter
        Its attention modules.

    Attributes
    ----------
    decoding : DecodingHooks
        Per-layer masks for compressed caches, in every thread.
    persistent : bool
        Kept by :func:`enable_compressed_decoding` (called by a prefill that returns a compressed
        cache) until :func:`disable_compressed_decoding`.
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter):
        self.model = model
        self.adapter = adapter
        self.decoding = DecodingHooks(adapter, model=model)
        self.persistent = False
        self._scopes = 0  # callers inside hooks_in_use (ask, a prefill running)
        self._listeners: dict[int, HookListener] = {}  # thread ident -> its listener
        self._handles: list = []
        self._guard: GuardedGenerate | None = None

    @property
    def users(self) -> int:
        """Reasons to keep the hooks registered."""
        return int(self.persistent) + self._scopes + len(self._listeners)

    @property
    def num_hooks(self) -> int:
        """Module hooks registered on the model."""
        return len(self._handles)

    def listener(self) -> HookListener | None:
        """The calling thread's listener, or ``None``."""
        return self._listeners.get(threading.get_ident())

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, ``torch.save``) keeps the decoding hooks, no session and no thread's state."""
        state = dict(self.__dict__)
        state.update(persistent=True, _scopes=0, _listeners={})
        return state

    # -- registration (under _LOCK) --------------------------------------------------------

    def _install(self) -> None:
        decoder = self.adapter.decoder
        self._handles.append(decoder.register_forward_pre_hook(self._decoder_pre, with_kwargs=True))
        self._handles.append(decoder.register_forward_hook(self._decoder_post, with_kwargs=True))
        for idx in self.adapter.compressible:
            module = self.adapter.attention[idx]
            self._handles.append(module.register_forward_pre_hook(functools.partial(self._attention_pre, idx), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self.decoding.restore_implementation, always_call=True))
            self._handles.append(module.register_forward_hook(functools.partial(self._attention_post, idx), with_kwargs=True))
        self._guard = GuardedGenerate.install(self.model, self._check_generate)

    def _uninstall(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        if self.model.__dict__.get(_ATTR) is self:
            delattr(self.model, _ATTR)

    # -- dispatch --------------------------------------------------------------------------

    def _decoder_pre(self, module: nn.Module, args: tuple, kwargs: dict = _NO_KWARGS) -> None:
        if kwargs is _NO_KWARGS:
            return None  # a forward of a thread that does not use kvpress_lab, racing the registration
        self.decoding.capture_inputs(module, args, kwargs)
        listener = self.listener()
        check_decoding_compression(cache_from_kwargs(kwargs), listener is not None and listener.applies_decoding_compression())
        if listener is not None:
            listener.decoder_pre(module, args, kwargs)
        return None

    def _decoder_post(self, module: nn.Module, args: tuple, kwargs: object, output: object = _NO_KWARGS) -> None:
        if output is _NO_KWARGS:
            return None
        self.decoding.end_forward()
        listener = self.listener()
        if listener is not None:
            listener.decoder_post(module, args, kwargs, output)
        return None

    def _attention_pre(self, idx: int, module: nn.Module, args: tuple, kwargs: dict = _NO_KWARGS):
        if kwargs is _NO_KWARGS:
            return None
        changed = self.decoding.prepare_layer(idx, module, args, kwargs)
        listener = self.listener()
        if listener is not None:
            listener.attention_pre(idx, module, args, kwargs)
        return changed

    def _attention_post(self, idx: int, module: nn.Module, args: tuple, kwargs: object, output: object = _NO_KWARGS) -> None:
        if output is _NO_KWARGS:
            return None
        listener = self.listener()
        if listener is not None:
            listener.attention_post(idx, module, args, kwargs, output)
        return None

    def _check_generate(self, call: GenerateCall) -> None:
        self.decoding.check_generate(call)  # first: a refused call must leave the listener un-armed
        listener = self.listener()
        if listener is not None:
            listener.check_generate(call)


def model_hooks(model: nn.Module) -> ModelHooks | None:
    """The hooks kvpress_lab keeps on ``model``, or ``None``."""
    hooks = getattr(model, "__dict__", {}).get(_ATTR)
    return hooks if isinstance(hooks, ModelHooks) else None


def _acquire(model: nn.Module) -> ModelHooks:
    """The model's hooks, created and registered when absent (call under ``_LOCK``, then add a user)."""
    hooks = model_hooks(model)
    if hooks is None:
        hooks = ModelHooks(model, ModelAdapter.for_model(model))
        try:
            hooks._install()
        except BaseException:
            hooks._uninstall()
            raise
        model.__dict__[_ATTR] = hooks
    return hooks


def _release(hooks: ModelHooks) -> None:
    if hooks.users == 0:
        hooks._uninstall()


def _refuse_nested(hooks: ModelHooks | None, what: str) -> None:
    if hooks is not None and hooks.listener() is not None:
        raise RuntimeError(
            f"{what} cannot run here: a kvpress_lab recipe is already applied to this model in this thread (an "
            "enclosing `with recipe.apply(model)` block, whose session would compress these passes too); exit that "
            "block first. Each thread applies one recipe to a model at a time; other threads may apply their own."
        )


def add_listener(model: nn.Module, listener: HookListener, what: str) -> ModelHooks:
    """Register ``listener`` for the calling thread's calls on ``model`` (atomically; one per thread).

    Raises
    ------
    RuntimeError
        When this thread already has a listener on ``model``; ``what`` names the caller.
    """
    with _LOCK:
        _refuse_nested(model_hooks(model), what)
        hooks = _acquire(model)
        hooks._listeners[threading.get_ident()] = listener
        return hooks


def remove_listener(model: nn.Module, listener: HookListener) -> None:
    """Undo :func:`add_listener` (no-op when ``listener`` is not registered)."""
    with _LOCK:
        hooks = model_hooks(model)
        if hooks is None:
            return
        for thread, registered in list(hooks._listeners.items()):
            if registered is listener:
                del hooks._listeners[thread]
        _release(hooks)


@contextlib.contextmanager
def thread_listener(model: nn.Module, listener: HookListener) -> Iterator[ModelHooks]:
    """Inside the block, ``listener`` receives this thread's calls on ``model`` instead of its usual listener.

    For a pass nested in a session's forward (the reconstruction pass of ``kvzip``, which scores
    from the attention calls of repeat forwards while the session sits out); the previous
    listener (or none) is back on exit.
    """
    thread = threading.get_ident()
    with _LOCK:
        hooks = _acquire(model)
        previous = hooks._listeners.get(thread)
        hooks._listeners[thread] = listener
    try:
        yield hooks
    finally:
        with _LOCK:
            if previous is None:
                hooks._listeners.pop(thread, None)
                _release(hooks)
            else:
                hooks._listeners[thread] = previous


@contextlib.contextmanager
def hooks_in_use(model: nn.Module, what: str) -> Iterator[ModelHooks]:
    """Keep the decoding hooks on ``model`` inside the block (compressed caches decode there).

    Refuses to start inside a ``with recipe.apply(model)`` block of the same thread, whose session
    would compress the block's own passes; ``what`` names the caller in that error.
    """
    with _LOCK:
        _refuse_nested(model_hooks(model), what)
        hooks = _acquire(model)
        hooks._scopes += 1
    try:
        yield hooks
    finally:
        with _LOCK:
            hooks._scopes -= 1
            _release(hooks)


def enable_compressed_decoding(model: nn.Module, *, ragged_kernel: VarlenKernel | None = None) -> DecodingHooks:
    """Keep the decoding hooks on ``model`` so caches from :func:`~kvpress_lab.engine.prefill.prefill` decode correctly.

    Idempotent; the hooks are inert for ordinary caches. Remove them with
    :func:`disable_compressed_decoding`.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a supported family.
    ragged_kernel : VarlenKernel or None
        When given, ragged (per-head) layers attend through this variable-length kernel instead
        of the one the attention implementation implies (see :class:`~kvpress_lab.engine.decoding.DecodingHooks`);
        set on existing hooks too.
    """
    with _LOCK:
        hooks = _acquire(model)
        hooks.persistent = True
    if ragged_kernel is not None:
        hooks.decoding.ragged_kernel = ragged_kernel
    return hooks.decoding


def disable_compressed_decoding(model: nn.Module) -> None:
    """Undo :func:`enable_compressed_decoding` (no-op when absent); the hooks stay while a session or a
    :func:`hooks_in_use` block (``ask``, a running prefill) in any thread still uses them."""
    with _LOCK:
        hooks = model_hooks(model)
        if hooks is not None:
            hooks.persistent = False
            _release(hooks)


def persistent_hooks(model: nn.Module) -> DecodingHooks | None:
    """The decoding hooks :func:`enable_compressed_decoding` keeps on ``model``, if any."""
    hooks = model_hooks(model)
    return hooks.decoding if hooks is not None and hooks.persistent else None
