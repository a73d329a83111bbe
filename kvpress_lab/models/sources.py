"""Where a model comes from: the embedded model, a local checkpoint, a local GGUF file, or the Hub.

:func:`resolve_model_source` decides from the name alone which of these ``load_model`` is given,
without importing torch and without touching the network; :func:`hub_unreachable_reason` says,
quickly, why the Hugging Face Hub cannot be asked (offline mode, or no connection), so that a
missing model fails in about a second instead of after the Hub client's retries.
"""

from __future__ import annotations

import difflib
import os
import pathlib
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from ..errors import KVPressLabError
from .locate import EMBEDDED_MODEL_NAME

__all__ = [
    "EMBEDDED_NAMES",
    "ModelNotFoundError",
    "ModelSource",
    "embedded_suggestion",
    "hub_unreachable_reason",
    "looks_like_path",
    "resolve_model_source",
]

#: Every name (compared case-insensitively) that selects the embedded model.
EMBEDDED_NAMES: frozenset[str] = frozenset({EMBEDDED_MODEL_NAME, "embedded"})

#: Seconds allowed to open a connection to the Hub before it counts as unreachable.
_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


class ModelNotFoundError(KVPressLabError, FileNotFoundError):
    """No model at the given name: not an embedded name, not a local checkpoint or GGUF file, not reachable on the Hub.

    The message lists what was tried, and a near-miss of an embedded name as "did you mean".
    """


@dataclass(frozen=True)
class ModelSource:
    """What ``load_model`` loads, decided from the name.

    Parameters
    ----------
    kind : {"embedded", "checkpoint", "gguf", "hub"}
        The embedded model, a local transformers checkpoint folder, a local GGUF file, or a Hub id.
    location : str
        The folder (embedded, checkpoint, gguf: the file's folder) or the Hub id.
    gguf_file : str or None
        The GGUF file's name inside ``location`` (``kind="gguf"`` only).
    """

    kind: Literal["embedded", "checkpoint", "gguf", "hub"]
    location: str
    gguf_file: str | None = None

    def describe(self) -> str:
        """One phrase for messages, e.g. ``"local GGUF file /models/gemma.gguf"``.

        >>> ModelSource("hub", "Qwen/Qwen3-0.6B").describe()
        'Hugging Face Hub id Qwen/Qwen3-0.6B'
        """
        if self.kind == "gguf":
            return f"local GGUF file {pathlib.Path(self.location) / str(self.gguf_file)}"
        return {"embedded": f"embedded model {EMBEDDED_MODEL_NAME}",
                "checkpoint": f"local checkpoint folder {self.location}",
                "hub": f"Hugging Face Hub id {self.location}"}[self.kind]


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path: starts with ``.``, ``/`` or ``~``, ends with
    ``.gguf``, holds the platform's own separator, or more than one ``/`` (Hub ids have at most one).

    >>> looks_like_path("Qwen/Qwen3-0.6B"), looks_like_path("./ckpt"), looks_like_path("model.gguf")
    (False, True, True)
    """
    separators = {sep for sep in (os.sep, os.altsep) if sep and sep != "/"}
    return (name.startswith((".", "/", "~")) or name.lower().endswith(".gguf") or name.count("/") > 1
            or any(sep in name for sep in separators))


def embedded_suggestion(name: str) -> str | None:
    """The embedded model's name when ``name`` looks like a misspelling or a shortening of it.

    >>> embedded_suggestion("smollm2"), embedded_suggestion("SmolLM2-135M"), embedded_suggestion("gpt2")
    ('smollm2-135m-instruct', 'smollm2-135m-instruct', None)
    """
    text = str(name).strip().lower()
    if len(text) < 4 or text in EMBEDDED_NAMES:
        return None
    stem = text.rsplit("/", 1)[-1]
    if EMBEDDED_MODEL_NAME.startswith(stem) or difflib.get_close_matches(stem, sorted(EMBEDDED_NAMES), n=1, cutoff=0.6):
        return EMBEDDED_MODEL_NAME
    return None


def _gguf_in_folder(folder: pathlib.Path) -> ModelSource:
    files = sorted(p.name for p in folder.glob("*.gguf") if p.is_file())
    if len(files) == 1:
        return ModelSource("gguf", str(folder), files[0])
    if files:
        raise ModelNotFoundError(f"{folder} holds {len(files)} GGUF files ({', '.join(files)}) and no config.json; "
                                 "pass the path of the one to load.")
    raise ModelNotFoundError(f"{folder} is a folder with neither a config.json (a transformers checkpoint) nor a .gguf "
                             "file; pass a checkpoint folder, a .gguf file, the embedded model's name or a Hub id.")


def resolve_model_source(name_or_path: str | os.PathLike[str]) -> ModelSource:
    """Decide what ``name_or_path`` names, looking only at this machine (no network, no torch).

    In this order: an embedded name (``"smollm2-135m-instruct"``, ``"embedded"``, any case); an
    existing local path (a checkpoint folder with ``config.json``, a ``.gguf`` file, or a folder
    holding exactly one ``.gguf`` file); otherwise a Hub id, unless the name can only be a path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        What the user passed (``~`` is expanded).

    Returns
    -------
    ModelSource
        ``kind="embedded"`` has an empty ``location`` (the checkpoint is converted on first use).

    Raises
    ------
    ModelNotFoundError
        A path that does not exist, a file that is not GGUF, a folder with neither a
        ``config.json`` nor a single ``.gguf`` file; the message says what was expected and,
        for a near-miss of the embedded name, suggests it.
    """
    if isinstance(name_or_path, str) and name_or_path.strip().lower() in EMBEDDED_NAMES:
        return ModelSource("embedded", "")
    text = os.fspath(name_or_path)
    path = pathlib.Path(text).expanduser()
    if path.is_dir():
        return ModelSource("checkpoint", str(path)) if (path / "config.json").is_file() else _gguf_in_folder(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", str(path.parent), path.name)
        raise ModelNotFoundError(f"{text} is a file but not a GGUF file (.gguf); pass a .gguf file, a checkpoint "
                                 "folder (with config.json), the embedded model's name or a Hub id.")
    if isinstance(name_or_path, os.PathLike) or looks_like_path(text):
        suggestion = embedded_suggestion(text)
        hint = f" Did you mean the embedded model {suggestion!r}?" if suggestion else ""
        raise ModelNotFoundError(f"{text} does not exist (no {path.absolute()}); pass a checkpoint folder (with "
                                 f"config.json), a .gguf file, the embedded model's name or a Hub id (org/name).{hint}")
    return ModelSource("hub", text)


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub cannot be asked now, or ``None`` when a connection opens.

    ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value, or no TCP connection to the
    Hub's host (``HF_ENDPOINT``, default ``https://huggingface.co``) within 3 seconds.
    """
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE:
            return f"offline mode ({variable}={os.environ[variable]})"
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"no connection to {host}:{port} ({exc.strerror or type(exc).__name__})"
