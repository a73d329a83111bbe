"""Handlers behind ``kvpress-lab run``, ``demo`` and ``plot`` (``bench`` lives in :mod:`.bench`).

:mod:`kvpress_lab.cli` declares the options and calls these functions with its parsed
``argparse.Namespace``; everything heavy (torch, the model, matplotlib) is imported here, lazily,
so ``kvpress-lab list`` stays fast.

The ``check_*`` functions are what every model-loading command verifies before it loads anything
(``--model`` path, ``--device`` availability, ``--attn``, output paths, prompt lengths): a user
mistake is a :class:`BenchmarkInputError` (one line, exit status 1), and flags that conflict are a
:class:`UsageError` (exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from kvpress_lab.errors import KVPressLabError

__all__ = [
    "BenchmarkInputError", "UsageError", "DEVICE_TYPES", "parse_device", "resolve_device", "check_device",
    "looks_like_path", "check_model", "check_model_arguments", "check_output_file", "check_output_dir",
    "check_needle_lengths", "load", "model_load_error", "recipe_entries", "run_recipe", "run_result", "cmd_run", "cmd_demo",
    "cmd_plot",
]

#: Device types ``--device`` accepts (besides ``auto``).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu")


class BenchmarkInputError(KVPressLabError, ValueError):
    """A command-line value that cannot work (budget below the window, missing file, ...)."""


class UsageError(BenchmarkInputError):
    """Flags that conflict, or that would do nothing together; the CLI exits with status 2."""

    exit_status = 2


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


def looks_like_path(name: str) -> bool:
    """Whether ``--model`` names a local path rather than a hub id (``org/name``) or the embedded model.

    A path starts with ``.``, ``/`` or ``~``, contains the platform's separator where that is not
    ``/``, or has more than one ``/`` (hub ids have exactly one).
    """
    separators = {sep for sep in (os.sep, os.altsep) if sep and sep != "/"}
    return name.startswith((".", "/", "~")) or any(sep in name for sep in separators) or name.count("/") > 1


def check_model(name: str, flag: str = "--model") -> None:
    """A ``--model`` that looks like a path must be a checkpoint folder (with ``config.json``)."""
    if not looks_like_path(name):
        return
    path = pathlib.Path(name).expanduser()
    if not path.exists():
        raise BenchmarkInputError(f"{flag} {name} does not exist (no {path.absolute()}); give a checkpoint folder, "
                                  "a hub id (org/name) or the embedded model's name.")
    if not path.is_dir():
        raise BenchmarkInputError(f"{flag} {name} is not a folder; give a checkpoint folder (with config.json).")
    if not (path / "config.json").is_file():
        raise BenchmarkInputError(f"{flag} {name} has no config.json; it is not a transformers checkpoint folder.")


def check_model_arguments(args: argparse.Namespace) -> None:
    """``--model``, ``--device`` and ``--attn`` can work on this machine (before anything loads)."""
    import importlib.util

    import torch

    check_model(args.model)
    check_device(args.device)
    if getattr(args, "attn", None) == "flash_attention_2":
        device = resolve_device(args.device)
        if torch.device(device).type != "cuda":
            shown = args.device if device == args.device else f"{args.device}, i.e. {device}"
            raise BenchmarkInputError(f"--attn flash_attention_2 runs on CUDA only, and this run is on --device {shown}; "
                                      "use --attn sdpa, or a CUDA --device.")
        if importlib.util.find_spec("flash_attn") is None:
            raise BenchmarkInputError("--attn flash_attention_2 needs the flash-attn package (pip install flash-attn); "
                                      "use --attn sdpa.")


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

    A loader error that is not a kvpress_lab one (a hub id that does not exist, no network, ...)
    becomes a :class:`BenchmarkInputError` naming ``--model``.
    """
    from kvpress_lab.models import load_model

    device = resolve_device(args.device)
    source = os.path.expanduser(args.model) if looks_like_path(args.model) else args.model
    print(f"Loading {args.model} on {device} ({args.attn}) ...", file=sys.stderr, flush=True)
    try:
        return load_model(source, dtype=args.dtype, device=device, attn_implementation=args.attn)
    except KVPressLabError:
        raise
    except OSError as exc:
        raise model_load_error(args.model, exc) from exc


def model_load_error(name: str, exc: BaseException) -> BenchmarkInputError:
    """The one-line error for a model that ``from_pretrained`` could not load."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return BenchmarkInputError(f"cannot load --model {name}: {message}")


def recipe_entries(names: Sequence[str], budgets: Sequence[int], window: int | None = None) -> list[tuple[str, int | None, Any]]:
    """``(label, budget, Recipe or None)`` for every preset x budget; ``"full"`` once, without budget."""
    from kvpress_lab.benchmarks.sweep import FULL, make_recipe

    overrides = {} if window is None else {"window": window}
    entries: list[tuple[str, int | None, Any]] = []
    for name in dict.fromkeys(names):
        for budget in ([None] if name == FULL else budgets):
            try:
                entries.append((name, budget, make_recipe(name, budget, **overrides)))
            except KVPressLabError:
                raise
            except (TypeError, ValueError) as exc:
                raise BenchmarkInputError(f"recipe {name!r} with budget {budget}: {exc}") from exc
    return entries


#: Recipe fields that every preset sets (explicitly or by default): giving one on the command line is an override.
_PRESET_FIELDS = ("allocator", "scorer", "executor", "window")


def run_recipe(args: argparse.Namespace, echo: Any = None) -> Any:
    """The recipe of ``kvpress-lab run``: ``--preset`` with overrides, or one built from ``--allocator``.

    On a preset, ``--scorer``, ``--executor``, ``--window``, ``--budget`` and ``--ratio`` are
    applied through :meth:`Recipe.preset <kvpress_lab.Recipe.preset>`; each one that replaces a
    field the preset sets is reported by ``echo`` (default: a line on stderr), e.g.
    ``overriding preset snapkv: scorer=h2o (was snapkv_window; ...)``. A strategy replaced by
    another one does not inherit the preset's hyperparameters of the old one (``scorer_kwargs``
    of ``snapkv_window`` mean nothing to ``h2o``): they are dropped, and the line says so.
    """
    from kvpress_lab import Recipe

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    overrides: dict[str, Any] = {}
    for dest, key in (("scorer", "scorer"), ("executor", "executor"), ("window", "window"), ("budget", "budget"),
                      ("ratio", "compression_ratio")):
        if getattr(args, dest, None) is not None:
            overrides[key] = getattr(args, dest)
    try:
        if args.preset is None:
            return Recipe(**{"allocator": args.allocator or "uniform", "scorer": "snapkv_window", **overrides})
        return _preset_with_overrides(args.preset, overrides, echo)
    except KVPressLabError:
        raise
    except (TypeError, ValueError) as exc:
        raise BenchmarkInputError(str(exc)) from exc


def _preset_with_overrides(name: str, overrides: dict[str, Any], echo: Any) -> Any:
    from kvpress_lab import Recipe
    from kvpress_lab.registry import get_registry

    preset = dict(get_registry().get("preset", name).obj.recipe)  # unknown names fail here, with a suggestion
    reference = Recipe.preset(name)
    replaced = [role for role in ("allocator", "scorer", "executor")
                if role in overrides and overrides[role] != getattr(reference, role) and preset.get(f"{role}_kwargs")]
    notes = []
    for key, value in overrides.items():
        if key in _PRESET_FIELDS or key in preset or (key == "compression_ratio" and "budget" in preset):
            old = getattr(reference, key)
            note = f"{key}={value} ({'unchanged' if value == old else f'was {old}'}"
            if key in replaced:
                dropped = ", ".join(f"{k}={v}" for k, v in preset[f"{key}_kwargs"].items())
                note += f"; the preset's {key}_kwargs {dropped} are dropped"
            notes.append(note + ")")
    if replaced:
        base = Recipe.preset(name, **{k: v for k, v in overrides.items() if k not in replaced})
        recipe = dataclasses.replace(base, **{role: overrides[role] for role in replaced},
                                     **{f"{role}_kwargs": {} for role in replaced})
    else:
        recipe = Recipe.preset(name, **overrides)
    if notes:
        echo(f"overriding preset {name}: {', '.join(notes)}")
    return recipe


def cmd_run(args: argparse.Namespace) -> int:
    """One recipe on one prompt: answer, cache size before/after, timings."""
    from kvpress_lab.benchmarks.generation import generate_answer
    from kvpress_lab.benchmarks.tables import human_bytes

    if args.prompt_file is not None:
        path = pathlib.Path(args.prompt_file)
        if not path.is_file():
            raise BenchmarkInputError(f"--prompt-file {path} does not exist.")
        try:
            prompt = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchmarkInputError(f"--prompt-file {path} cannot be read as UTF-8 text: {exc}.") from None
    else:
        prompt = args.prompt
    if not prompt:
        raise BenchmarkInputError("Give a prompt: kvpress-lab run 'text ...' or --prompt-file FILE.")
    recipe = None if args.full else run_recipe(args)
    check_model_arguments(args)
    model, tokenizer = load(args)
    question = args.question or ""
    if args.chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt + question}], tokenize=False,
                                               add_generation_prompt=True)
        question = ""
    if args.mode == "query-agnostic" and not question:
        raise BenchmarkInputError("--mode query-agnostic needs --question (the part appended after compression).")
    result = generate_answer(model, tokenizer, recipe, prompt, question, mode=args.mode,
                             max_new_tokens=args.max_new_tokens)
    if getattr(args, "json", False):
        print(json.dumps(run_result(args, recipe, result), indent=2))
        return 0
    report = result.cache
    print(result.text.strip())
    print("-" * 60, file=sys.stderr)
    label = "full cache" if recipe is None else (recipe.preset_name or f"{recipe.allocator}+{recipe.scorer}")
    print(f"recipe        {label}: {'-' if recipe is None else recipe.to_json()}", file=sys.stderr)
    print(f"prompt        {result.prompt_tokens} tokens, {args.mode}", file=sys.stderr)
    if report is not None:
        print(f"KV cache      {human_bytes(report.uncompressed_bytes)} before -> {human_bytes(report.total_bytes)} "
              f"after ({100 * report.ratio:.1f}%, uncompressed size computed from the shapes)", file=sys.stderr)
    print(f"prefill       {result.prefill_s:.2f} s" + (" (compression included)" if recipe else ""), file=sys.stderr)
    if args.mode == "query-agnostic":
        print(f"question      {result.question_s:.2f} s", file=sys.stderr)
    print(f"decoding      {1000 * result.decode_step_s:.1f} ms/token over {result.new_tokens} tokens", file=sys.stderr)
    if report is not None:
        print("", file=sys.stderr)
        print(report.table(), file=sys.stderr)
    return 0


def run_result(args: argparse.Namespace, recipe: Any, result: Any) -> dict[str, Any]:
    """The JSON document of ``kvpress-lab run --json``: answer, recipe, cache report and timings.

    ``recipe`` is ``null`` for ``--full``; ``cache`` is :meth:`CacheReport.to_dict
    <kvpress_lab.cache_reports.CacheReport.to_dict>` of the cache right after prefill; times are
    seconds (``decode_step_s`` is ``null`` when no decoding step ran).
    """
    import math

    decode = result.decode_step_s
    return {
        "answer": result.text.strip(),
        "model": args.model,
        "mode": args.mode,
        "recipe": None if recipe is None else json.loads(recipe.to_json()),
        "prompt_tokens": result.prompt_tokens,
        "new_tokens": result.new_tokens,
        "cache": None if result.cache is None else result.cache.to_dict(),
        "timings": {
            "prefill_s": result.prefill_s,
            "question_s": result.question_s,
            "decode_step_s": None if decode is None or math.isnan(decode) else decode,
        },
    }


def cmd_demo(args: argparse.Namespace) -> int:
    """``kvpress-lab demo``: see :mod:`kvpress_lab.benchmarks.demo`."""
    from kvpress_lab.benchmarks.demo import run_demo

    if args.budgets is None:  # the CLI fills it in; a namespace straight from parse_args may not have it
        args.budgets = list(args.default_budgets)
    recipe_entries(args.recipes, args.budgets)  # validate names and budgets before loading the model
    check_model_arguments(args)
    check_output_dir("--out-dir", args.out_dir)
    check_needle_lengths(args.lengths)
    model, tokenizer = load(args)
    check_needle_lengths(args.lengths, args.depths, tokenizer, seed=args.seed)
    run_demo(args.model, args.out_dir, lengths=args.lengths, depths=args.depths, budgets=args.budgets,
             recipes=args.recipes, seed=args.seed, progress=not args.no_progress, model=model, tokenizer=tokenizer)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Result files -> one PNG (needle heatmap or budget-vs-score curves)."""
    from kvpress_lab.benchmarks.plot import plot_rows
    from kvpress_lab.benchmarks.results import read_meta, read_rows

    rows: list[dict[str, Any]] = []
    models: list[str] = []
    for name in args.files:
        path = pathlib.Path(name)
        if not path.is_file():
            raise BenchmarkInputError(f"result file {path} does not exist.")
        try:
            rows += read_rows(path)
            models += [str(meta["model"]) for meta in read_meta(path) if meta.get("model")]
        except json.JSONDecodeError as exc:
            raise BenchmarkInputError(f"{path} is not JSON: {exc}") from exc
        except (ValueError, KeyError, AttributeError) as exc:  # JSON, but not a result file (or not text)
            message = str(exc) if str(path) in str(exc) else f"{path} is not a kvpress_lab result file: {exc}"
            raise BenchmarkInputError(message) from exc
    if args.task is not None:
        rows = [r for r in rows if r.get("task") == args.task]
    out = check_output_file("--out", args.out) if args.out else pathlib.Path(args.files[0]).with_suffix(".png")
    try:
        written = plot_rows(rows, out, title=args.title, model=", ".join(dict.fromkeys(models)) or None)
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from exc
    print(f"Wrote {written} from {len(rows)} rows.")
    return 0
