"""Handlers behind ``kvpress-lab run``, ``demo`` and ``plot`` (``bench`` lives in :mod:`.bench`).

:mod:`kvpress_lab.cli` declares the options and calls these functions with its parsed
``argparse.Namespace``; everything heavy (torch, the model, matplotlib) is imported here, lazily,
so ``kvpress-lab list`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from kvpress_lab.errors import KVPressLabError

__all__ = ["BenchmarkInputError", "load", "recipe_entries", "cmd_run", "cmd_demo", "cmd_plot", "full_cache_nbytes"]


class BenchmarkInputError(KVPressLabError, ValueError):
    """A command-line value that cannot work (budget below the window, missing file, ...)."""


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Load ``args.model`` on ``args.device`` (``auto``: CUDA when available) in ``args.dtype``, with ``args.attn``."""
    import torch

    from kvpress_lab.models import load_model

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"Loading {args.model} on {device} ({args.attn}) ...", file=sys.stderr, flush=True)
    return load_model(args.model, dtype=args.dtype, device=device, attn_implementation=args.attn)


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


def _run_recipe(args: argparse.Namespace) -> Any:
    from kvpress_lab import Recipe

    sizing: dict[str, Any] = {}
    if args.budget is not None:
        sizing["budget"] = args.budget
    if args.ratio is not None:
        sizing["compression_ratio"] = args.ratio
    if args.window is not None:
        sizing["window"] = args.window
    try:
        if args.preset is not None:
            return Recipe.preset(args.preset, **sizing)
        return Recipe(allocator=args.allocator or "uniform", scorer=args.scorer or "snapkv_window", **sizing)
    except KVPressLabError:
        raise
    except (TypeError, ValueError) as exc:
        raise BenchmarkInputError(str(exc)) from exc


def full_cache_nbytes(model: Any, prompt_tokens: int) -> int:
    """Bytes an uncompressed cache of ``prompt_tokens`` tokens holds (sliding-window layers capped)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    element = next(model.parameters()).element_size()
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    tokens = [min(prompt_tokens, window) if kind == "sliding_attention" and window else prompt_tokens for kind in kinds]
    return sum(2 * kv_heads * t * head_dim * element for t in tokens)


def cmd_run(args: argparse.Namespace) -> int:
    """One recipe on one prompt: answer, cache size before/after, timings."""
    from kvpress_lab.benchmarks.generation import generate_answer
    from kvpress_lab.benchmarks.tables import human_bytes

    if args.prompt_file is not None:
        path = pathlib.Path(args.prompt_file)
        if not path.is_file():
            raise BenchmarkInputError(f"--prompt-file {path} does not exist.")
        prompt = path.read_text(encoding="utf-8")
    else:
        prompt = args.prompt
    if not prompt:
        raise BenchmarkInputError("Give a prompt: kvpress-lab run 'text ...' or --prompt-file FILE.")
    recipe = None if args.full else _run_recipe(args)
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
    before = full_cache_nbytes(model, result.prompt_tokens)
    print(result.text.strip())
    print("-" * 60, file=sys.stderr)
    label = "full cache" if recipe is None else (recipe.preset_name or f"{recipe.allocator}+{recipe.scorer}")
    print(f"recipe        {label}: {'-' if recipe is None else recipe.to_json()}", file=sys.stderr)
    print(f"prompt        {result.prompt_tokens} tokens, {args.mode}", file=sys.stderr)
    print(f"KV cache      {human_bytes(before)} before -> {human_bytes(result.kv_bytes)} after "
          f"({100 * result.kv_bytes / before:.1f}%)", file=sys.stderr)
    print(f"prefill       {result.prefill_s:.2f} s" + (" (compression included)" if recipe else ""), file=sys.stderr)
    if args.mode == "query-agnostic":
        print(f"question      {result.question_s:.2f} s", file=sys.stderr)
    print(f"decoding      {1000 * result.decode_step_s:.1f} ms/token over {result.new_tokens} tokens", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``kvpress-lab demo``: see :mod:`kvpress_lab.benchmarks.demo`."""
    from kvpress_lab.benchmarks.demo import run_demo

    recipe_entries(args.recipes, args.budgets)  # validate names and budgets before loading the model
    model, tokenizer = load(args)
    run_demo(args.model, args.out_dir, lengths=args.lengths, depths=args.depths, budgets=args.budgets,
             recipes=args.recipes, seed=args.seed, progress=not args.no_progress, model=model, tokenizer=tokenizer)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Result files -> one PNG (needle heatmap or budget-vs-score curves)."""
    from kvpress_lab.benchmarks.plot import plot_rows
    from kvpress_lab.benchmarks.results import read_rows

    rows: list[dict[str, Any]] = []
    for name in args.files:
        path = pathlib.Path(name)
        if not path.is_file():
            raise BenchmarkInputError(f"result file {path} does not exist.")
        try:
            rows += read_rows(path)
        except json.JSONDecodeError as exc:
            raise BenchmarkInputError(f"{path} is not JSON: {exc}") from exc
    if args.task is not None:
        rows = [r for r in rows if r.get("task") == args.task]
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.files[0]).with_suffix(".png")
    try:
        written = plot_rows(rows, out, title=args.title)
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from exc
    print(f"Wrote {written} from {len(rows)} rows.")
    return 0
