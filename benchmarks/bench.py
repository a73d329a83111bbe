"""``kvpress-lab bench needle|ruler|longbench|speed``: sweeps over recipes x budgets x samples.

needle, ruler and longbench run through :func:`~kvpress_lab.benchmarks.sweep.run_sweep`
(JSON Lines output, resumable, ``--shard i/n``) and print the summary of every result in the
output file; speed writes one JSON result file and prints its table.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from kvpress_lab.benchmarks.commands import (
    BenchmarkInputError, check_flags_fit_recipes, check_model_arguments, check_needle_lengths, check_output_file,
    decoding_overrides, load, recipe_entries,
)
from kvpress_lab.benchmarks.results import model_settings, read_rows, run_metadata, write_result_file
from kvpress_lab.benchmarks.sample_groups import SamplePrompt, SampleGroups, share_prefill
from kvpress_lab.benchmarks.sweep import Cell, check_sweep_file, finished_keys, plan_cells, run_sweep, select_shard

__all__ = ["RULER_MAX_NEW_TOKENS", "cmd_bench", "split_longbench_prompt"]

#: Generation length per RULER task (enough for every reference, short enough for a CPU).
RULER_MAX_NEW_TOKENS = {"niah_single": 12, "niah_multikey": 12, "niah_multivalue": 40, "variable_tracking": 30,
                        "common_words": 50}


def _capped(default: int, cap: int | None) -> int:
    return default if cap is None else min(default, cap)


def _sweep(args: argparse.Namespace, benchmark: str, samples: dict[str, Any], prompt_of: Callable[..., Any],
           row_of: Callable[..., dict[str, Any]], config: dict[str, Any],
           prepare: Callable[[Any], None] | None = None) -> list[dict[str, Any]]:
    """Plan, validate, load, run this shard and return every row of the output file.

    ``prompt_of(tokenizer, spec)`` builds a sample's :class:`~kvpress_lab.benchmarks.sample_groups.SamplePrompt`
    and ``row_of(spec, prompt, result)`` a cell's task fields; the cells of one sample share its
    prefill (:class:`~kvpress_lab.benchmarks.sample_groups.SampleGroups`, ``--share-prefill``).
    ``prepare(tokenizer)`` runs right after loading, before anything is written: the place for
    checks that need the tokenizer.
    """
    shard = args.shard
    ratios = list(getattr(args, "ratios", None) or [])
    entries = recipe_entries(args.recipes, args.budgets, ratios, window=args.window, decoding=decoding_overrides(args))
    check_flags_fit_recipes(args, list(entries.values()))
    chunk = getattr(args, "prefill_chunk", None)
    share = share_prefill(args)  # before the model loads: --share-prefill N with --prefill-chunk is a usage error
    cells = plan_cells(args.recipes, args.budgets, list(samples), ratios)
    check_model_arguments(args)
    out = check_output_file("--out", args.out or f"results/{benchmark}.jsonl")
    try:
        check_sweep_file(out, benchmark=benchmark, model=args.model)
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from None
    model, tokenizer = load(args)
    if prepare is not None:
        prepare(tokenizer)
    seed = getattr(args, "seed", 0)  # longbench has no --seed: its prompts come from the data files
    meta = run_metadata(benchmark, args.model, {f"{label}@{size.value}": r for (label, size), r in entries.items()}, seed=seed,
                        **model_settings(model), config={**config, "mode": args.mode, "prefill_chunk": chunk})

    groups = SampleGroups(model, tokenizer, entries, samples, prompt_of, row_of, mode=args.mode,
                          share=share, prefill_chunk=chunk)

    def runner(cell: Cell) -> dict[str, Any]:
        recipe = entries[(cell.recipe, cell.size)]
        row = groups(cell)
        return {**row, "mode": args.mode, "prefill_chunk": None if recipe is None else chunk,
                "recipe_config": None if recipe is None else recipe.to_dict()}

    runner.plan = groups.plan  # type: ignore[attr-defined]  # run_sweep: sample-major, one prefill per sample
    warm = groups.warm_up([c for c in select_shard(cells, shard) if c.key not in finished_keys(out)])
    if warm is not None:
        print(f"warm-up (full cache, first sample, not recorded): {warm:.2f} s", file=sys.stderr)
    report = run_sweep(cells, runner, out, meta, shard=shard, progress=not args.no_progress)
    print(f"{out}: shard {shard[0]}/{shard[1]} ran {report['ran']} cells, skipped {report['skipped']} already done.")
    return read_rows(out)


def _bench_needle(args: argparse.Namespace) -> int:
    from kvpress_lab.benchmarks.needle import build_needle_prompt, is_correct, needle_cells, token_counter
    from kvpress_lab.benchmarks.plot import plot_needle_heatmap
    from kvpress_lab.benchmarks.tables import needle_summary, needle_table

    from kvpress_lab.extras import require_extra

    require_extra("bench", "bench needle (its heatmap)", ("matplotlib",))  # before the sweep, not after it
    grid = {f"L={length}|d={depth:g}": (length, depth) for length, depth in needle_cells(args.lengths, args.depths)}
    passcodes: dict[tuple[int, float], str] = {}
    check_needle_lengths(args.lengths)  # the builder's floor, before the model loads

    def prompt_of(tokenizer: Any, cell: tuple[int, float]) -> SamplePrompt:
        prompt = build_needle_prompt(cell[0], cell[1], token_counter(tokenizer), seed=args.seed)
        passcodes[cell] = prompt.passcode
        return SamplePrompt(prompt.context, prompt.question, args.max_new_tokens)

    def row_of(cell: tuple[int, float], prompt: SamplePrompt, result: Any) -> dict[str, Any]:
        passcode = passcodes[cell]
        return {"length": cell[0], "depth": cell[1], "prompt_tokens": result.prompt_tokens, "passcode": passcode,
                "output": result.text, "correct": is_correct(result.text, passcode),
                "prefill_s": result.prefill_s, "decode_step_s": result.decode_step_s, "kv_bytes": result.kv_bytes}

    rows = _sweep(args, "needle", grid, prompt_of, row_of,
                  {"lengths": args.lengths, "depths": args.depths, "ratios": list(getattr(args, "ratios", None) or [])},
                  prepare=lambda tokenizer: check_needle_lengths(args.lengths, args.depths, tokenizer, seed=args.seed))
    print(needle_table(needle_summary(rows)))
    png = pathlib.Path(args.out or "results/needle.jsonl").expanduser().with_suffix(".png")
    print(f"Wrote {plot_needle_heatmap(rows, png, model=args.model)}")
    return 0


def _bench_ruler(args: argparse.Namespace) -> int:
    from kvpress_lab.benchmarks import ruler
    from kvpress_lab.benchmarks.needle import token_counter
    from kvpress_lab.benchmarks.tables import score_table

    unknown = sorted(set(args.tasks) - set(ruler.TASKS))
    if unknown:
        raise BenchmarkInputError(f"unknown RULER task(s) {unknown}; expected some of {sorted(ruler.TASKS)}.")
    short = [length for length in args.lengths if length < ruler.MIN_LENGTH]
    if short:
        raise BenchmarkInputError(f"--lengths {short[0]} is too short for RULER's tasks: they need {ruler.MIN_LENGTH} "
                                  f"tokens or more; use --lengths >= {ruler.MIN_LENGTH}.")
    samples = {f"{task}|L={length}|s={i}": (task, length, args.seed + i)
               for task in args.tasks for length in args.lengths for i in range(args.samples)}
    built: dict[tuple, Any] = {}

    def prompt_of(tokenizer: Any, spec: tuple[str, int, int]) -> SamplePrompt:
        built[spec] = ruler.generate(spec[0], spec[1], seed=spec[2], count_tokens=token_counter(tokenizer))
        return SamplePrompt(built[spec].context, built[spec].query, _capped(RULER_MAX_NEW_TOKENS[spec[0]], args.max_new_tokens))

    def row_of(spec: tuple[str, int, int], prompt: SamplePrompt, result: Any) -> dict[str, Any]:
        sample = built[spec]
        return {"task": spec[0], "length": spec[1], "prompt_tokens": result.prompt_tokens, "output": result.text,
                "answers": list(sample.answers), "score": 100 * ruler.string_match_all(result.text, sample.answers),
                "prefill_s": result.prefill_s, "kv_bytes": result.kv_bytes}

    rows = _sweep(args, "ruler", samples, prompt_of, row_of,
                  {"tasks": args.tasks, "lengths": args.lengths, "samples": args.samples})
    print(score_table(rows, "task"))
    return 0


def split_longbench_prompt(task: str, record: dict[str, Any], prompt: str) -> tuple[str, str]:
    """``(context part, question part)`` of a built (maybe truncated, maybe chat-wrapped) prompt."""
    from kvpress_lab.benchmarks.longbench_prompts import DATASET2PROMPT

    tail = DATASET2PROMPT[task].split("{context}", 1)[1].format(input=record["input"])
    position = prompt.rfind(tail)
    if position < 0:  # the middle cut reached the question: treat the whole prompt as context
        return prompt, ""
    return prompt[:position], prompt[position:]


def _bench_longbench(args: argparse.Namespace) -> int:
    from kvpress_lab.benchmarks import longbench
    from kvpress_lab.benchmarks.tables import score_table

    if args.data_dir is None:
        raise BenchmarkInputError("bench longbench needs --data-dir, the folder of the official <task>.jsonl files.")
    tasks = args.tasks or [t for t in longbench.TASKS if (pathlib.Path(args.data_dir) / f"{t}.jsonl").is_file()]
    try:
        records = {t: longbench.load_task(args.data_dir, t, limit=args.limit) for t in tasks}
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise BenchmarkInputError(str(exc)) from exc
    if not any(records.values()):
        raise BenchmarkInputError(f"no LongBench records found in {args.data_dir} for tasks {tasks}.")
    samples = {f"{t}|{r['_id']}": (t, r) for t in tasks for r in records[t]}

    def prompt_of(tokenizer: Any, spec: tuple[str, dict[str, Any]]) -> SamplePrompt:
        task, record = spec
        prompt = longbench.truncate_middle(longbench.build_prompt(task, record), tokenizer, args.max_length)
        if args.chat == "auto" and longbench.uses_chat_template(task) and tokenizer.chat_template:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
        if args.mode == "query-agnostic":
            context, question = split_longbench_prompt(task, record, prompt)
        else:
            context, question = prompt, ""
        return SamplePrompt(context, question, _capped(longbench.DATASET2MAXLEN[task], args.max_new_tokens))

    def row_of(spec: tuple[str, dict[str, Any]], prompt: SamplePrompt, result: Any) -> dict[str, Any]:
        task, record = spec
        score = longbench.score_prediction(task, result.text, record["answers"], record.get("all_classes"))
        return {"task": task, "_id": record["_id"], "prompt_tokens": result.prompt_tokens, "pred": result.text,
                "score": 100 * score, "prefill_s": result.prefill_s, "kv_bytes": result.kv_bytes}

    rows = _sweep(args, "longbench", samples, prompt_of, row_of,
                  {"tasks": tasks, "limit": args.limit, "max_length": args.max_length, "chat": args.chat})
    print(score_table(rows, "task"))
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    from kvpress_lab.benchmarks.speed import measure_speed, minimum_length
    from kvpress_lab.benchmarks.tables import speed_table

    entries = [(label, size, recipe) for (label, size), recipe
               in recipe_entries(args.recipes, args.budgets, window=args.window, decoding=decoding_overrides(args)).items()]
    check_flags_fit_recipes(args, [recipe for _, _, recipe in entries])
    check_model_arguments(args)
    out = check_output_file("--out", args.out or "results/speed.json")
    model, tokenizer = load(args)
    need = minimum_length(tokenizer)
    short = [length for length in args.lengths if length < need]
    if short:
        raise BenchmarkInputError(f"--lengths {short[0]} is too short for the speed prompt: its question takes "
                                  f"{need - 1} of this model's tokens; use --lengths >= {need}.")
    rows = measure_speed(model, tokenizer, entries, args.lengths, decode_steps=args.decode_steps,
                         repeats=args.repeats, seed=args.seed, progress=not args.no_progress,
                         prefill_chunk=getattr(args, "prefill_chunk", None))
    meta = run_metadata("speed", args.model, {f"{label}@{size.value}": r for label, size, r in entries}, seed=args.seed,
                        **model_settings(model),
                        config={"lengths": args.lengths, "decode_steps": args.decode_steps, "repeats": args.repeats,
                                "prefill_chunk": getattr(args, "prefill_chunk", None)})
    out = write_result_file(out, meta, rows)
    print(speed_table(rows))
    print(f"Wrote {out}")
    return 0


def _bench_memory(args: argparse.Namespace) -> int:
    from kvpress_lab.benchmarks.memory import cmd_memory

    return cmd_memory(args)


_TASKS = {"needle": _bench_needle, "ruler": _bench_ruler, "longbench": _bench_longbench, "speed": _bench_speed,
          "memory": _bench_memory}


def cmd_bench(args: argparse.Namespace) -> int:
    """Dispatch ``kvpress-lab bench TASK``."""
    if args.task != "memory" and args.budgets is None:  # the CLI fills it in; a namespace straight from parse_args may not
        args.budgets = list(args.default_budgets)
    return _TASKS[args.task](args)
