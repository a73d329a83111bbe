"""The engine's modes, one module each, in the order a session asks them to compress a layer call.

A mode (:class:`~kvpress_lab.engine.modes.base.EngineMode`) owns its state and decides, per
layer call, whether it compresses it. A session runs the registered modes that
:meth:`~kvpress_lab.engine.modes.base.EngineMode.applies` to its recipe and asks them in the
order below, stopping at the first that handles the call:

1. ``chunked`` (:mod:`.chunked`): the chunks of an armed chunked prefill;
2. ``decoding`` (:mod:`.decoding`): decoding steps of a recipe with ``decode_budget`` (it also
   notes each prefill's inputs, and lets the prefill modes compress it);
3. ``deferred`` (:mod:`.deferred`): prefills with a ``"global"`` allocator or a reconstruction scorer;
4. ``blocks`` (:mod:`.blocks`): prefills scored block by block (``block_size``);
5. ``one_shot`` (:mod:`.one_shot`): every other prefill.

A new mode is a new module and one :func:`register_mode` line; no session code changes.
"""

from __future__ import annotations

from kvpress_lab.engine.modes.base import EngineMode, ModeContext, SessionRecord
from kvpress_lab.engine.modes.blocks import BlockScoring
from kvpress_lab.engine.modes.chunked import ChunkedPrefillMode
from kvpress_lab.engine.modes.decoding import DecodingCompression
from kvpress_lab.engine.modes.deferred import DeferredEviction
from kvpress_lab.engine.modes.one_shot import OneShotPrefill

__all__ = ["EngineMode", "ModeContext", "SessionRecord", "ENGINE_MODES", "register_mode", "unregister_mode"]

#: The registered modes, in the order a session asks them.
ENGINE_MODES: list[type[EngineMode]] = []


def register_mode(mode: type[EngineMode], *, before: str | None = None) -> type[EngineMode]:
    """Register ``mode`` (last, or just before the mode named ``before``); returns it (a decorator too).

    Raises
    ------
    ValueError
        A mode of that name is registered already, or ``before`` names no registered mode.
    """
    names = [m.name for m in ENGINE_MODES]
    if mode.name in names:
        raise ValueError(f"An engine mode named {mode.name!r} is registered already; modes: {', '.join(names)}.")
    if before is not None and before not in names:
        raise ValueError(f"before={before!r} names no registered engine mode; modes: {', '.join(names)}.")
    ENGINE_MODES.insert(len(names) if before is None else names.index(before), mode)
    return mode


def unregister_mode(name: str) -> None:
    """Remove the mode registered under ``name``."""
    for mode in ENGINE_MODES:
        if mode.name == name:
            ENGINE_MODES.remove(mode)
            return
    raise ValueError(f"No engine mode named {name!r}; modes: {', '.join(m.name for m in ENGINE_MODES)}.")


register_mode(ChunkedPrefillMode)
register_mode(DecodingCompression)
register_mode(DeferredEviction)
register_mode(BlockScoring)
register_mode(OneShotPrefill)
