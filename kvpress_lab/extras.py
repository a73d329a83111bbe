"""Optional dependencies, grouped as the package's extras, and the one-line error naming the extra to install.

A bare ``pip install kvpress-lab`` brings the core only (torch, transformers, pluggy, ...). What
needs more says so before any work starts, in one line that names the extra:
``kvpress-lab demo needs matplotlib, which is not installed: pip install 'kvpress-lab[bench]'``.
"""

from __future__ import annotations

import importlib.util

from kvpress_lab.errors import KVPressLabError

__all__ = ["EXTRAS", "MissingExtraError", "missing_modules", "require_extra"]

#: Import names each extra of ``pyproject.toml`` provides (the ones kvpress_lab imports).
EXTRAS: dict[str, tuple[str, ...]] = {
    "models": ("gguf",),  # reading GGUF files (the embedded model, a user's .gguf)
    "bench": ("matplotlib", "gguf"),  # plots; the embedded model; psutil is optional (peak memory sampling)
    "slurm": ("submitit",),
    "eval": ("lm_eval", "wonderwords", "nltk", "scipy"),  # lm-eval and its RULER tasks' own dependencies
    "gpu": ("flash_attn",),
}


class MissingExtraError(KVPressLabError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The names of ``modules`` that cannot be imported here (looked up, never imported)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`MissingExtraError` when a module ``what`` needs from ``extra`` is missing.

    Parameters
    ----------
    extra : str
        A key of :data:`EXTRAS` (``"bench"``, ``"models"``, ...), named in the message.
    what : str
        Who needs it, the subject of the message (``"kvpress-lab demo"``, ``"load_model of a GGUF file"``).
    modules : tuple of str, optional
        The import names needed, default every module of the extra.

    Raises
    ------
    ValueError
        ``extra`` is not a known extra.
    MissingExtraError
        Some module is not installed.

    Examples
    --------
    >>> require_extra("models", "reading a GGUF file", modules=("json",))  # installed: nothing happens
    """
    if extra not in EXTRAS:
        raise ValueError(f"Expected an extra among {sorted(EXTRAS)}, got {extra!r}.")
    missing = missing_modules(EXTRAS[extra] if modules is None else modules)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingExtraError(f"{what} needs {' and '.join(missing)}, which {verb} not installed: "
                                f"pip install 'kvpress-lab[{extra}]'")
