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

from kvpress_lab.benchmarks.input_errors import BenchmarkInputError, UsageError
from kvpress_lab.errors import KVPressLabError
from kvpress_lab.models.sources import looks_like_path

__all__ = [
    "BenchmarkInputError", "UsageError", "DEVICE_TYPES", "parse_device", "resolve_device", "check_device",
    "looks_like_path", "check_model", "check_model_arguments", "check_output_file", "check_output_dir",
    "check_needle_lengths", "load", "model_load_error", "recipe_entries", "run_recipe", "run_result", "cmd_run", "cmd_demo",
    "cmd_plot", "DEVICE_MAP_STRATEGIES", "parse_device_map", "LONG_CONTEXT_FLAGS", "decoding_overrides", "check_long_context_flags",
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


def recipe_entries(names: Sequence[str], budgets: Sequence[int], window: int | None = None,
                   decoding: dict[str, Any] | None = None) -> list[tuple[str, int | None, Any]]:
    """``(label, budget, Recipe or None)`` for every preset x budget; ``"full"`` and budget-free presets once, without budget.

    ``decoding`` (from :func:`decoding_overrides`) sets the decoding-compression fields of every
    preset's recipe; ``"full"`` stays uncompressed.
    """
    from kvpress_lab.benchmarks.sweep import budget_free, make_recipe

    overrides = {**({} if window is None else {"window": window}), **(decoding or {})}
    entries: list[tuple[str, int | None, Any]] = []
    for name in dict.fromkeys(names):
        for budget in ([None] if budget_free(name) else budgets):
            try:
                entries.append((name, budget, make_recipe(name, budget, **overrides)))
            except KVPressLabError:
                raise
            except (TypeError, ValueError) as exc:
                raise BenchmarkInputError(f"recipe {name!r} with budget {budget}: {exc}") from exc
    return entries


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


def check_long_context_flags(args: argparse.Namespace, recipes: Sequence[Any] | None = None) -> None:
    """``--prefill-chunk`` and the decoding flags make sense together and with ``recipes`` (before loading).

    With ``recipes=None`` only the flags are checked against each other (before any recipe is built).

    Raises
    ------
    UsageError
        ``--compress-every`` or ``--no-compress-prefill`` without ``--decode-budget``; any of these
        flags with no recipe to apply it to; ``--prefill-chunk`` with a recipe that cannot compress
        a chunked prefill (the engine's :func:`~kvpress_lab.engine.chunking.check_chunkable` says why).
    """
    given = [flag for flag, dest, _ in LONG_CONTEXT_FLAGS if getattr(args, dest, None) is not None]
    if not given:
        return
    if getattr(args, "decode_budget", None) is None:
        alone = [flag for flag in given if flag in ("--compress-every", "--no-compress-prefill")]
        if alone:
            raise UsageError(f"{' and '.join(alone)} {'do' if len(alone) > 1 else 'does'} nothing without --decode-budget "
                             "(the budget decoding-time compression cuts each layer back to); add --decode-budget N.")
    if recipes is None:
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
    overrides.update(decoding_overrides(args))
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
    check_long_context_flags(args, [recipe])
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
                             max_new_tokens=args.max_new_tokens, prefill_chunk=getattr(args, "prefill_chunk", None))
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
    from kvpress_lab.extras import require_extra

    require_extra("bench", "the demo (its heatmap)", ("matplotlib",))  # its heatmap; checked before the model loads
    from kvpress_lab.benchmarks.demo import run_demo

    if args.budgets is None:  # the CLI fills it in; a namespace straight from parse_args may not have it
        args.budgets = list(args.default_budgets)
    from kvpress_lab.benchmarks.sample_groups import ratio_entries, share_prefill

    recipe_entries(args.recipes, args.budgets)  # validate names and budgets before loading the model
    ratio_entries(args.recipes, getattr(args, "ratios", None) or [])
    check_model_arguments(args)
    check_output_dir("--out-dir", args.out_dir)
    check_needle_lengths(args.lengths)
    model, tokenizer = load(args)
    check_needle_lengths(args.lengths, args.depths, tokenizer, seed=args.seed)
    run_demo(args.model, args.out_dir, lengths=args.lengths, depths=args.depths, budgets=args.budgets,
             recipes=args.recipes, seed=args.seed, progress=not args.no_progress, model=model, tokenizer=tokenizer,
             ratios=getattr(args, "ratios", None) or [], share=share_prefill(args))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Result files -> one PNG (needle heatmap or budget-vs-score curves)."""
    from kvpress_lab.benchmarks.plot import plot_rows
    from kvpress_lab.benchmarks.plot_speed import is_speed_rows, plot_speed
    from kvpress_lab.extras import require_extra

    require_extra("bench", "plotting", ("matplotlib",))
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
    draw = plot_speed if is_speed_rows(rows) else plot_rows  # bench speed files: time and KV size against length
    try:
        written = draw(rows, out, title=args.title, model=", ".join(dict.fromkeys(models)) or None)
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from exc
    print(f"Wrote {written} from {len(rows)} rows.")
    return 0
