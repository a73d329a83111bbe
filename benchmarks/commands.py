"""What every model-loading benchmark checks before it loads anything, and how it loads the model.

The ``check_*`` functions verify ``--model`` paths, ``--device`` availability, ``--attn``,
output paths and prompt lengths; :func:`load` loads the model; :func:`recipe_entries` builds the
recipes of a sweep's labels and sizes (:func:`~kvpress_lab.recipe_labels.recipe_for`). A user
mistake is a :class:`BenchmarkInputError` (one line, exit status 2), and flags that conflict are
a :class:`UsageError` (exit status 2). The command line (:mod:`kvpress_lab.cli`) stands above
this module: it parses the flags and calls the benchmarks; nothing here imports it. Everything
heavy (torch, the model) is imported in the functions, so the command line starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvpress_lab.benchmarks.input_errors import BenchmarkInputError, UsageError
from kvpress_lab.errors import KVPressLabError
from kvpress_lab.models.sources import looks_like_path

if TYPE_CHECKING:
    from kvpress_lab.recipe_labels import CacheSize

__all__ = [
    "BenchmarkInputError", "UsageError", "DEVICE_TYPES", "parse_device", "resolve_device", "check_device",
    "looks_like_path", "check_model", "check_model_arguments", "check_output_file", "check_output_dir",
    "check_needle_lengths", "load", "model_load_error", "recipe_entries", "DEVICE_MAP_STRATEGIES", "parse_device_map",
    "LONG_CONTEXT_FLAGS", "decoding_overrides", "check_flags_fit_recipes",
]

#: Device types ``--device`` accepts (besides ``auto``).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu")




# ---------------------------------------------------------------------------------------------
# Checks made before the model loads
# ---------------------------------------------------------------------------------------------


def parse_device(text: str) -> str:
    """``auto`` or a ``torch.device`` string of one of :data:`DEVICE_TYPES`, normalised.

    Raises
    ------
    ValueError
        With a message naming ``--device`` and the accepted forms.
    """
    import torch

    if text == "auto":
        return text
    accepted = f"--device must be auto, {', '.join(DEVICE_TYPES)} or a device index such as cuda:1"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{accepted}, got {text if text.strip() else repr(text)}") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"{accepted}, got {text}")
    return str(device)


def resolve_device(text: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other device unchanged."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


#: ``--device-map`` strategies of accelerate (besides a JSON mapping of module names to devices).
DEVICE_MAP_STRATEGIES: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(text: str) -> str | dict[str, Any]:
    """A ``--device-map``: one of :data:`DEVICE_MAP_STRATEGIES`, a JSON object or a ``.json`` file of one.

    The object maps module names to devices, e.g. ``{"model.embed_tokens": 0, "model.layers.0": 0,
    "model.layers.1": "cuda:1", "model.norm": "cuda:1", "lm_head": "cuda:1"}`` (``from_pretrained``'s
    ``device_map``).

    Raises
    ------
    ValueError
        Naming ``--device-map``, the accepted forms and what was given.
    """
    accepted = f"--device-map must be {', '.join(DEVICE_MAP_STRATEGIES)}, a JSON object of module -> device or a .json file of one"
    if text in DEVICE_MAP_STRATEGIES:
        return text
    source = text
    if not text.lstrip().startswith("{"):
        path = pathlib.Path(text).expanduser()
        if path.suffix != ".json" or not path.is_file():
            raise ValueError(f"{accepted}, got {text if text.strip() else repr(text)}")
        source = path.read_text(encoding="utf-8")
    try:
        mapping = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{accepted}; {text} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in mapping.items()):
        raise ValueError(f"{accepted}: a non-empty object of module name -> device (a string such as \"cuda:1\", "
                         f"\"cpu\", \"disk\" or a GPU index), got {source.strip()[:200]}")
    return mapping


def check_device(text: str, flag: str = "--device") -> None:
    """Refuse a device this machine's torch cannot use (no CUDA, index past the visible GPUs, ...)."""
    import torch

    device = torch.device(resolve_device(parse_device(text)))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"this torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise BenchmarkInputError(f"{flag} {text}: CUDA is not available ({why}); use {flag} cpu or auto.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BenchmarkInputError(f"{flag} {text}: only {count} CUDA device{'' if count == 1 else 's'} visible "
                                      f"(cuda:0 to cuda:{count - 1}); pick one of them.")
    elif device.type in ("mps", "xpu"):
        backend = torch.backends.mps if device.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            raise BenchmarkInputError(f"{flag} {text}: {device.type.upper()} is not available on this machine; "
                                      f"use {flag} cpu or auto.")


def check_model(name: str, flag: str = "--model") -> None:
    """A ``--model`` that looks like a path must be a checkpoint folder (with ``config.json``) or a GGUF file.

    Checked before anything loads (:func:`~kvpress_lab.models.sources.resolve_model_source`, no network).
    """
    from kvpress_lab.models.sources import ModelNotFoundError, resolve_model_source

    if not looks_like_path(name):
        return
    try:
        resolve_model_source(name)
    except ModelNotFoundError as exc:
        raise BenchmarkInputError(f"{flag} {exc}") from None


def check_model_arguments(args: argparse.Namespace) -> None:
    """``--model``, ``--device`` and ``--attn`` can work on this machine (before anything loads)."""
    import importlib.util

    import torch

    check_model(args.model)
    check_device(args.device)
    device_map = getattr(args, "device_map", None)
    if device_map is not None:
        if args.device != "auto":
            raise UsageError(f"--device {args.device} conflicts with --device-map: the map places the weights (and the "
                             "inputs follow the first layer); drop --device.")
        for device in (device_map.values() if isinstance(device_map, dict) else ()):
            if device not in ("cpu", "disk", "meta"):
                check_device(f"cuda:{device}" if isinstance(device, int) else str(device), "--device-map")
    if getattr(args, "attn", None) == "flash_attention_2":
        device = resolve_device(args.device)
        if torch.device(device).type != "cuda":
            shown = args.device if device == args.device else f"{args.device}, i.e. {device}"
            raise BenchmarkInputError(f"--attn flash_attention_2 runs on CUDA only, and this run is on --device {shown}; "
                                      "use --attn sdpa, or a CUDA --device.")
        if importlib.util.find_spec("flash_attn") is None:
            raise BenchmarkInputError("--attn flash_attention_2 needs the flash-attn package (pip install "
                                      "'kvpress-lab[gpu]', or pip install flash-attn); use --attn sdpa.")


def _writable_folder(flag: str, shown: pathlib.Path, folder: pathlib.Path) -> None:
    """``folder`` exists as a writable folder, or can be created: its first existing ancestor is one."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise BenchmarkInputError(f"{flag} {shown}: {candidate} is a file, not a folder, so nothing can be "
                                          f"written under it; choose another {flag}.")
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise BenchmarkInputError(f"{flag} {shown}: the folder {candidate} is not writable; choose another {flag}.")
            return


def check_output_file(flag: str, path: str | os.PathLike[str]) -> pathlib.Path:
    """``path`` can be written as a file: not a folder, and its parent is (or can be made) a folder."""
    target = pathlib.Path(path).expanduser()
    if target.is_dir():
        raise BenchmarkInputError(f"{flag} {target} is a folder; give a file name (e.g. {target / 'results.json'}).")
    _writable_folder(flag, target, target.parent)
    return target


def check_output_dir(flag: str, path: str | os.PathLike[str]) -> pathlib.Path:
    """``path`` is (or can be made) a writable folder."""
    target = pathlib.Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise BenchmarkInputError(f"{flag} {target} is a file, not a folder; choose another {flag}.")
    _writable_folder(flag, target, target)
    return target


def check_needle_lengths(lengths: Sequence[int], depths: Sequence[float] = (), tokenizer: Any = None,
                         seed: int = 0) -> None:
    """Every needle length holds the prompt's fixed parts (question and needle).

    Without ``tokenizer`` only the builder's floor (:data:`~kvpress_lab.benchmarks.needle.MIN_LENGTH`)
    is checked, which needs no model; with it, the exact minimum of each cell in that tokenizer's tokens.
    """
    from kvpress_lab.benchmarks.needle import MIN_LENGTH, QUESTION, required_length, token_counter

    count = None if tokenizer is None else token_counter(tokenizer)
    for length in lengths:
        if count is None:
            if length < MIN_LENGTH:
                raise BenchmarkInputError(f"--lengths {length} is too short for the needle prompt, which needs at least "
                                          f"{MIN_LENGTH} tokens; use --lengths >= {MIN_LENGTH}.")
            continue
        need = max(required_length(length, depth, count, seed) for depth in depths)
        if length < need:
            raise BenchmarkInputError(f"--lengths {length} is too short for the needle prompt: its question alone takes "
                                      f"{count(QUESTION)} of this model's tokens, and with the needle it needs {need}; "
                                      f"use --lengths >= {need}.")


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Load ``args.model`` on ``args.device`` (``auto``: CUDA when available) in ``args.dtype``, with ``args.attn``.

    With ``args.device_map`` (``--device-map``) the weights are placed by ``from_pretrained``
    instead (``"auto"`` spreads them over the visible GPUs); ``args.dtype`` may be ``"auto"``
    (the checkpoint's dtype).

    A loader error that is not a kvpress_lab one (a hub id that does not exist, no network, ...)
    becomes a :class:`BenchmarkInputError` naming ``--model``.
    """
    from kvpress_lab.models import load_model

    device_map = getattr(args, "device_map", None)
    placement: dict[str, Any] = {"device": resolve_device(args.device)} if device_map is None else {"device_map": device_map}
    source = os.path.expanduser(args.model) if looks_like_path(args.model) else args.model
    where = placement["device"] if device_map is None else f"device_map={json.dumps(device_map)}"
    print(f"Loading {args.model} on {where} ({args.attn}, dtype {args.dtype}) ...", file=sys.stderr, flush=True)
    try:
        return load_model(source, dtype=args.dtype, attn_implementation=args.attn, **placement)
    except KVPressLabError:
        raise
    except OSError as exc:
        raise model_load_error(args.model, exc) from exc


def model_load_error(name: str, exc: BaseException) -> BenchmarkInputError:
    """The one-line error for a model that ``from_pretrained`` could not load."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return BenchmarkInputError(f"cannot load --model {name}: {message}")


def recipe_entries(labels: Sequence[str], budgets: Sequence[int], ratios: Sequence[float] = (), *,
                   window: int | None = None, decoding: dict[str, Any] | None = None) -> dict[tuple[str, CacheSize], Any]:
    """``(label, size) -> Recipe or None`` for every label x budget, then every label x ratio
    (:func:`~kvpress_lab.recipe_labels.recipe_for`); ``"full"`` and budget-free presets once, without a size.

    ``window`` and ``decoding`` (from :func:`decoding_overrides`) override every preset's fields;
    ``"full"`` stays uncompressed.

    Raises
    ------
    BenchmarkInputError
        A recipe that cannot take its size or the overrides, naming the label and the size.
    """
    from kvpress_lab.recipe_labels import CacheSize, budget_free

    overrides = {**({} if window is None else {"window": window}), **(decoding or {})}
    labels = list(dict.fromkeys(labels))
    sizes = [("budget", CacheSize(budget=b)) for b in dict.fromkeys(budgets)]
    sizes += [("ratio", CacheSize(ratio=float(r))) for r in dict.fromkeys(ratios)]
    entries: dict[tuple[str, CacheSize], Any] = {}
    for label in labels:
        if budget_free(label):
            entries[(label, CacheSize())] = _entry(label, CacheSize(), overrides, "without a budget")
    for kind, size in sizes:
        for label in labels:
            if not budget_free(label):
                shown = size.budget if kind == "budget" else f"{size.ratio:g}"
                entries[(label, size)] = _entry(label, size, overrides, f"with {kind} {shown}")
    return entries


def _entry(label: str, size: CacheSize, overrides: dict[str, Any], what: str) -> Any:
    from kvpress_lab.recipe_labels import recipe_for

    try:
        return recipe_for(label, size, **overrides)
    except KVPressLabError:
        raise
    except (TypeError, ValueError) as exc:
        raise BenchmarkInputError(f"recipe {label!r} {what}: {exc}") from exc


#: The long-context flags, as ``(flag, dest, Recipe field or None)``: ``--prefill-chunk`` is a prefill option,
#: the others set :class:`~kvpress_lab.Recipe`'s decoding-compression fields.
LONG_CONTEXT_FLAGS: tuple[tuple[str, str, str | None], ...] = (
    ("--prefill-chunk", "prefill_chunk", None), ("--decode-budget", "decode_budget", "decode_budget"),
    ("--compress-every", "compress_every", "compress_every"), ("--no-compress-prefill", "compress_prefill", "compress_prefill"),
)


def decoding_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~kvpress_lab.Recipe` fields ``--decode-budget``, ``--compress-every`` and
    ``--no-compress-prefill`` set (only those given)."""
    return {key: getattr(args, dest) for _, dest, key in LONG_CONTEXT_FLAGS
            if key is not None and getattr(args, dest, None) is not None}


def check_flags_fit_recipes(args: argparse.Namespace, recipes: Sequence[Any]) -> None:
    """The long-context flags given (``--prefill-chunk``, ``--decode-budget``, ...) have a recipe to apply to, and
    ``--prefill-chunk`` suits each recipe (checked once, before loading; the flags among themselves are the command
    line's business).

    Raises
    ------
    UsageError
        Any of these flags with no recipe to apply it to; ``--prefill-chunk`` with a recipe that cannot compress a
        chunked prefill (the engine's :func:`~kvpress_lab.engine.chunking.check_chunkable` says why).
    """
    given = [flag for flag, dest, _ in LONG_CONTEXT_FLAGS if getattr(args, dest, None) is not None]
    if not given:
        return
    if not any(recipe is not None for recipe in recipes):
        raise UsageError(f"{' and '.join(given)} {'do' if len(given) > 1 else 'does'} nothing without a compression "
                         "recipe (the full cache is never compressed); add a preset or drop "
                         f"{' '.join(given)}.")
    if getattr(args, "prefill_chunk", None) is not None:
        from kvpress_lab.engine.chunking import check_chunkable

        for recipe in recipes:
            if recipe is not None:  # the engine checks even with compress_prefill=False
                try:
                    check_chunkable(recipe, args.prefill_chunk)
                except KVPressLabError as exc:
                    label = recipe.preset_name or f"{recipe.allocator}+{recipe.scorer}"
                    raise UsageError(f"--prefill-chunk {args.prefill_chunk} does not work with recipe {label}: {exc}") from None
