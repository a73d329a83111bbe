"""The queries an attention layer already computed, kept for a scorer that reads every prompt query.

H2O scores each entry by the attention it receives from *every* prompt query. Rebuilding those
queries from the layer's input repeats the layer's query projection, norm and rotary embedding:
about a sixth of H2O's cost at ``T = 4096`` on the embedded model. While a
:class:`~kvpress_lab.engine.session.CompressionSession` whose scorer declares
``reads_every_query = True`` is attached, the attention function the model calls — transformers'
``ALL_ATTENTION_FUNCTIONS`` entry for the module's ``config._attn_implementation`` — is wrapped:
the wrapper hands the call's ``query`` ``(B, Hq, S, D)`` (rotary applied, exactly what the
kernel receives) to the session, then calls the original function with the same arguments, so
the model computes exactly what it computes without the wrapper.

The wrapper is a local override in transformers' shared ``ALL_ATTENTION_FUNCTIONS``; the first
:func:`capture_queries` block that needs an implementation installs it and the last one to exit
removes it (reference-counted, under a lock), restoring whatever was there before. Listeners are
per thread: a call reaches the block of the thread that makes it, and modules no block of that
thread listens to pass straight through (several threads' sessions share one model). Implementations the model does not resolve through
that mapping — ``"eager"``, which each family module resolves to its own default function —
simply hand nothing over, and the scorer's queries are recomputed from the layer's input as
before (same scores up to float rounding; eager attention is the slow path anyway).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["capture_queries", "override_attention", "KeptQueries"]

Listener = Callable[[int, torch.Tensor], None]
#: ``fn(idx, module, query, key, value, attention_mask, **kwargs) -> (output, weights)``, transformers' attention signature
Override = Callable[..., tuple]

_LOCK = threading.Lock()
_LISTENERS: dict[tuple[int, int], tuple[int, Listener]] = {}  # (id(attention module), thread) -> (layer index, listener)
_OVERRIDES: dict[tuple[int, int], tuple[int, Override]] = {}  # (id(attention module), thread) -> (layer index, replacement)
_INSTALLED: dict[str, tuple[int, object]] = {}  # implementation -> (blocks using it, local override it replaced or _ABSENT)
_ABSENT = object()  # no local override was there before


@contextlib.contextmanager
def capture_queries(modules: Mapping[int, nn.Module], listener: Listener) -> Iterator[None]:
    """Inside the block, every call of ``modules[idx]`` made in this thread first runs ``listener(idx, query)``.

    Other threads' calls of the same modules pass straight through (or reach their own block's listener).

    Parameters
    ----------
    modules : Mapping[int, nn.Module]
        Layer index -> attention module (LlamaAttention, Qwen3Attention, ...).
    listener : Callable[[int, torch.Tensor], None]
        Receives the layer index and the call's ``(B, Hq, S, D)`` query, before the attention
        kernel runs. It must not modify the tensor.

    Raises
    ------
    RuntimeError
        If another block of this thread already listens to one of the modules.
    """
    with _registered(_LISTENERS, modules, listener, "the queries of attention layers {} are already being captured"):
        yield


@contextlib.contextmanager
def override_attention(modules: Mapping[int, nn.Module], fn: Override) -> Iterator[None]:
    """Inside the block, the attention kernel of ``modules[idx]`` is ``fn(idx, module, query, key, value, mask, **kwargs)``.

    ``fn`` takes and returns what transformers' attention functions do (``ALL_ATTENTION_FUNCTIONS``:
    ``(B, Hq, Q, D)`` query, ``(B, Hkv, S, D)`` key and value, the mask the model built for the
    implementation; it returns ``(attn_output (B, Q, Hq, D), weights or None)``), so a pass can
    compute the attention and read it in one go (KVzip's reconstruction). Implementations the model
    does not resolve through ``ALL_ATTENTION_FUNCTIONS`` (``"eager"``) are not overridden: check
    whether ``fn`` ran. Only calls made in the thread that entered the block are overridden; other
    threads' calls of the same modules run the original kernel.

    Raises
    ------
    RuntimeError
        If another block already overrides one of the modules.
    """
    with _registered(_OVERRIDES, modules, fn, "the attention of layers {} is already overridden"):
        yield


@contextlib.contextmanager
def _registered(table: dict, modules: Mapping[int, nn.Module], value: object, taken_message: str) -> Iterator[None]:
    """Inside the block, ``table[(id(module), this thread)] = (idx, value)`` for every module, and the wrapper installed."""
    implementations = _implementations(modules)
    thread = threading.get_ident()
    with _LOCK:
        taken = [idx for idx, module in modules.items() if (id(module), thread) in table]
        if taken:
            raise RuntimeError(taken_message.format(taken) + " by another block.")
        for idx, module in modules.items():
            table[(id(module), thread)] = (idx, value)
        for name in implementations:
            _install(name)
    try:
        yield
    finally:
        with _LOCK:
            for module in modules.values():
                table.pop((id(module), thread), None)
            for name in implementations:
                _uninstall(name)


class KeptQueries:
    """The queries each attention layer of ``modules`` computed in this thread, kept until its forward hook takes them.

    ``start()`` begins capturing (:func:`capture_queries`), ``pop(idx)`` hands layer ``idx``'s
    ``(B, Hq, S, D)`` over (``None`` when none was captured), ``stop()`` ends and forgets.
    """

    def __init__(self, modules: Mapping[int, nn.Module]):
        self.modules = dict(modules)
        self._queries: dict[int, torch.Tensor] = {}
        self._block = contextlib.ExitStack()

    def start(self) -> None:
        self._block.enter_context(capture_queries(self.modules, self._queries.__setitem__))

    def pop(self, idx: int) -> torch.Tensor | None:
        return self._queries.pop(idx, None)

    def stop(self) -> None:
        self._block.close()
        self._queries.clear()


def _implementations(modules: Mapping[int, nn.Module]) -> list[str]:
    """The ``ALL_ATTENTION_FUNCTIONS`` entries ``modules`` resolve their attention through."""
    return sorted({name for module in modules.values()
                   if isinstance(name := getattr(module.config, "_attn_implementation", None), str)
                   and name in ALL_ATTENTION_FUNCTIONS})


def _install(name: str) -> None:
    users, replaced = _INSTALLED.get(name, (0, _ABSENT))
    if users == 0:
        replaced = ALL_ATTENTION_FUNCTIONS._local_mapping.get(name, _ABSENT)  # a user's own local override, if any
        ALL_ATTENTION_FUNCTIONS[name] = _capturing(ALL_ATTENTION_FUNCTIONS[name])
    _INSTALLED[name] = (users + 1, replaced)


def _uninstall(name: str) -> None:
    users, replaced = _INSTALLED.pop(name)
    if users > 1:
        _INSTALLED[name] = (users - 1, replaced)
    elif replaced is _ABSENT:
        del ALL_ATTENTION_FUNCTIONS[name]
    else:
        ALL_ATTENTION_FUNCTIONS[name] = replaced


def _capturing(original: Callable) -> Callable:
    def attention(module: nn.Module, query: torch.Tensor, *args, **kwargs):
        entry = _LISTENERS.get((id(module), threading.get_ident()))
        if entry is not None:
            entry[1](entry[0], query)
        replacement = _OVERRIDES.get((id(module), threading.get_ident()))
        if replacement is not None:
            return replacement[1](replacement[0], module, query, *args, **kwargs)
        return original(module, query, *args, **kwargs)

    attention.__wrapped__ = original
    attention.kvpress_lab_capture = True
    return attention
