"""``kvpress-lab eval CONFIG.yaml``: every task x recipe x size x mode of a configuration, in one sweep.

One sweep (:func:`~kvpress_lab.benchmarks.sweep.run_sweep`) holds every cell of the
configuration: resumable (a finished cell is skipped), shardable (``--shard i/n``, the
scheduler's environment, or a job array through the launcher), one JSON line per cell in
``<output>/results.jsonl``. Each prompt (a sample in one mode) is prefilled once for all its
recipes (:class:`~kvpress_lab.benchmarks.sample_groups.SampleGroups`); lm-eval tasks are built
and scored by lm-eval (:mod:`~kvpress_lab.benchmarks.lm_eval_tasks`).

The output folder holds:

- ``results.jsonl``: a ``meta`` line per run (command, versions, machine, the resolved
  configuration) and one ``result`` line per cell with the same columns for every task:
  ``family`` (``lm_eval``, ``needle``, ``ruler``, ``longbench``, ``prompt``), ``task``,
  ``length``, ``mode``, ``recipe``, ``budget`` / ``compression_ratio``, ``sample``, ``score``
  (0-100; ``None`` for a prompt of your own), ``output``, ``prompt_tokens``, ``kv_bytes``,
  ``prefill_s``, ``decode_step_s``, ``recipe_config``;
- ``config.yaml``: the resolved configuration of the last run (every default filled in);
- ``summary.csv``: mean score, prompts and 95% interval per task, length, mode, recipe and size
  (:func:`~kvpress_lab.benchmarks.leaderboard.summary_rows`).

Resuming refuses a file whose rows were made by another recipe under the same label, or from
other documents under the same sample key (the lm-eval prompt's digest), instead of mixing them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks.eval_config import FULL, EvalConfig, TaskConfig
from kvpress_lab.benchmarks.input_errors import BenchmarkInputError
from kvpress_lab.benchmarks.sweep import Cell
from kvpress_lab.recipe_labels import CacheSize

__all__ = ["plan_recipes", "plan_samples", "plan_eval_cells", "run_eval", "write_outputs"]

#: RULER-style generation lengths of kvpress_lab's own generator (as ``bench ruler``).
_OWN_RULER_TOKENS = {"niah_single": 12, "niah_multikey": 12, "niah_multivalue": 40, "variable_tracking": 30,
                     "common_words": 50}


def plan_recipes(config: EvalConfig) -> dict[tuple[str, Any], Any]:
    """``(label, CacheSize) -> Recipe`` (``None`` for the full cache) of every recipe and size; built now, so names fail early."""
    from kvpress_lab import Recipe
    from kvpress_lab.errors import KVPressLabError

    entries: dict[tuple[str, CacheSize], Any] = {}
    for recipe in config.recipes:
        for slot in recipe.sizes:
            size = CacheSize.parse(slot)
            if recipe.is_full:
                entries[(FULL, size)] = None
                continue
            fields = {**recipe.fields, **size.recipe_fields()}
            try:
                built = Recipe.preset(recipe.preset, **fields) if recipe.preset else Recipe(**fields)
            except KVPressLabError:
                raise
            except (TypeError, ValueError) as exc:
                raise BenchmarkInputError(f"recipe {recipe.label!r} at size {slot}: {exc}") from exc
            entries[(recipe.label, size)] = built
    return entries


def _tokenizer_name(config: EvalConfig, task: TaskConfig) -> str:
    """What lm-eval's RULER tasks size prompts with: the task's ``tokenizer``, the embedded checkpoint, or the model."""
    if task.options.get("tokenizer"):
        return str(task.options["tokenizer"])
    from kvpress_lab.models import is_embedded_model_name

    if is_embedded_model_name(config.model.name):
        from kvpress_lab.models.checkpoint import embedded_checkpoint_dir

        return str(embedded_checkpoint_dir())
    return str(pathlib.Path(config.model.name).expanduser()) if pathlib.Path(config.model.name).expanduser().exists() \
        else config.model.name


def plan_samples(config: EvalConfig) -> dict[str, tuple[str, str, Any]]:
    """``sample key -> (mode, kind, spec)`` of every task in every mode; lm-eval tasks are built here."""
    samples: dict[str, tuple[str, str, Any]] = {}
    built: dict[tuple, list[Any]] = {}
    for task in config.tasks:
        options = task.options
        specs: list[tuple[str, Any]] = []
        if task.kind == "lm_eval":
            from kvpress_lab.extras import require_extra

            require_extra("eval", "lm-eval tasks in kvpress-lab eval", ("lm_eval", "wonderwords"))
            from kvpress_lab.benchmarks.lm_eval_tasks import load_samples

            specs = []
            for name in options["tasks"]:  # each (task, lengths) built once per run: its documents are then one set
                build = (name, _tokenizer_name(config, task), tuple(options.get("max_seq_lengths") or ()),
                         options.get("include_path"))
                if build not in built:
                    built[build] = load_samples([name], build[1], options.get("max_seq_lengths"), None, build[3])
                limit = options.get("limit")
                specs += [(f"lm_eval:{s.key}", s) for s in built[build] if limit is None or s.index < limit]
        elif task.kind == "needle":
            from kvpress_lab.benchmarks.needle import needle_cells

            specs = [(f"needle|L={length}|d={depth:g}", (length, depth))
                     for length, depth in needle_cells(options["lengths"], options["depths"])]
        elif task.kind == "ruler":
            from kvpress_lab.benchmarks import ruler

            unknown = sorted(set(options["tasks"]) - set(ruler.TASKS))
            if unknown:
                raise BenchmarkInputError(f"unknown RULER-style task(s) {unknown}; expected some of {sorted(ruler.TASKS)} "
                                          "(lm-eval's RULER tasks: kind lm_eval).")
            specs = [(f"ruler:{name}|L={length}|s={i}", (name, length, config.seed + i)) for name in options["tasks"]
                     for length in options["lengths"] for i in range(options["samples"])]
        elif task.kind == "longbench":
            from kvpress_lab.benchmarks import longbench

            names = options.get("tasks") or [t for t in longbench.TASKS
                                              if (pathlib.Path(options["data_dir"]) / f"{t}.jsonl").is_file()]
            try:
                records = {t: longbench.load_task(options["data_dir"], t, limit=options.get("limit")) for t in names}
            except (FileNotFoundError, ValueError, TypeError) as exc:
                raise BenchmarkInputError(str(exc)) from exc
            specs = [(f"longbench:{t}|{r['_id']}", (t, r)) for t in names for r in records[t]]
        else:  # prompt
            label = options.get("label") or "prompt"
            specs = [(f"prompt:{label}", dict(options))]
        for mode in task.modes:
            for key, spec in specs:
                key = f"{mode}|{key}"
                if key in samples:  # two task entries share this sample: it runs what either asks for
                    spec, task_here = _merge_sample(key, samples[key], spec, task)
                    samples[key] = (mode, task.kind, (spec, task_here))
                else:
                    samples[key] = (mode, task.kind, (spec, task))
    if not samples:
        raise BenchmarkInputError("the configuration's tasks have no sample to run.")
    return samples


class _EitherTask:
    """Two task entries of one sample: the recipes and sizes of either run; the first one's other settings apply."""

    def __init__(self, first: Any, second: Any):
        self.first, self.second = first, second
        self.kind, self.options, self.modes, self.max_new_tokens = first.kind, first.options, first.modes, first.max_new_tokens

    def runs(self, label: str, slot: Any) -> bool:
        return self.first.runs(label, slot) or self.second.runs(label, slot)


def _merge_sample(key: str, existing: tuple[str, str, Any], spec: Any, task: TaskConfig) -> tuple[Any, Any]:
    """The sample ``key`` asked for by two task entries: one prompt, either entry's cells; a conflict is an error."""
    old_spec, old_task = existing[2]
    same = old_spec.prompt == spec.prompt if hasattr(spec, "prompt") else old_spec == spec
    which = ("tasks", "lengths", "depths", "samples", "limit", "max_seq_lengths")  # what selects samples, not their prompt
    settings = [{k: v for k, v in t.options.items() if k not in which} for t in (old_task, task)]
    if not same or old_task.max_new_tokens != task.max_new_tokens or settings[0] != settings[1]:
        raise BenchmarkInputError(f"two task entries ask for sample {key} with different prompts or settings; give "
                                  "them the same settings, or make the samples differ (lengths, limit).")
    return old_spec, _EitherTask(old_task, task)


def plan_eval_cells(config: EvalConfig, samples: Mapping[str, tuple[str, str, Any]]) -> list[Cell]:
    """Every recipe x size x sample its task runs (``tasks[].recipes`` / ``sizes``), recipe-major (shards are cut from this order)."""
    return [Cell(recipe.label, CacheSize.parse(slot), key) for recipe in config.recipes for slot in recipe.sizes
            for key, (_, _, (_, task)) in samples.items() if task.runs(recipe.label, slot)]


class _Rows:
    """``prompt_of`` and ``row_of`` of every task kind (one instance per run; keeps what scoring needs)."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.needles: dict[Any, str] = {}
        self.rulers: dict[Any, Any] = {}

    def prompt_of(self, tokenizer: Any, item: tuple[str, str, Any]) -> Any:
        from kvpress_lab.benchmarks.sample_groups import SamplePrompt

        mode, kind, (spec, task) = item
        cap = task.max_new_tokens
        if kind == "lm_eval":
            context, question = spec.parts(mode)
            return SamplePrompt(context, question, _capped(spec.max_new_tokens, cap))
        if kind == "needle":
            from kvpress_lab.benchmarks.needle import build_needle_prompt, token_counter

            prompt = build_needle_prompt(spec[0], spec[1], token_counter(tokenizer), seed=self.config.seed)
            self.needles[spec] = prompt.passcode
            return SamplePrompt(prompt.context, prompt.question, cap or 8)
        if kind == "ruler":
            from kvpress_lab.benchmarks import ruler
            from kvpress_lab.benchmarks.needle import token_counter

            sample = ruler.generate(spec[0], spec[1], seed=spec[2], count_tokens=token_counter(tokenizer))
            self.rulers[spec] = sample
            return SamplePrompt(sample.context, sample.query, _capped(_OWN_RULER_TOKENS[spec[0]], cap))
        if kind == "longbench":
            return self._longbench_prompt(tokenizer, mode, spec, task)
        return self._own_prompt(tokenizer, mode, spec, cap)

    def _longbench_prompt(self, tokenizer: Any, mode: str, spec: Any, task: TaskConfig) -> Any:
        from kvpress_lab.benchmarks import longbench
        from kvpress_lab.benchmarks.bench import split_longbench_prompt
        from kvpress_lab.benchmarks.sample_groups import SamplePrompt

        name, record = spec
        prompt = longbench.truncate_middle(longbench.build_prompt(name, record), tokenizer, task.options["max_length"])
        if task.options["chat"] == "auto" and longbench.uses_chat_template(name) and tokenizer.chat_template:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
        context, question = split_longbench_prompt(name, record, prompt) if mode == "query-agnostic" else (prompt, "")
        return SamplePrompt(context, question, _capped(longbench.DATASET2MAXLEN[name], task.max_new_tokens))

    def _own_prompt(self, tokenizer: Any, mode: str, spec: Mapping[str, Any], cap: int | None) -> Any:
        from kvpress_lab.benchmarks.sample_groups import SamplePrompt

        text = spec.get("prompt")
        if text is None:
            try:
                text = pathlib.Path(spec["prompt_file"]).expanduser().read_text(encoding="utf-8")
            except OSError as exc:
                raise BenchmarkInputError(f"prompt_file {spec['prompt_file']}: {exc}") from None
        question = spec.get("question") or ""
        if spec.get("chat"):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text + question}], tokenize=False,
                                                 add_generation_prompt=True)
            question = ""
        if mode == "query-aware":
            text, question = text + question, ""
        return SamplePrompt(text, question, cap or 64)

    def row_of(self, item: tuple[str, str, Any], prompt: Any, result: Any) -> dict[str, Any]:
        mode, kind, (spec, task) = item
        common = {"family": kind, "mode": mode, "prompt_tokens": result.prompt_tokens, "output": result.text,
                  "new_tokens": result.new_tokens, "kv_bytes": result.kv_bytes, "prefill_s": result.prefill_s,
                  "decode_step_s": result.decode_step_s}
        if kind == "lm_eval":
            from kvpress_lab.benchmarks.lm_eval_tasks import main_metric, prompt_digest, score

            metrics = score(spec, result.text)
            metric, value = main_metric(spec, metrics)
            answers = spec.instance.doc.get("outputs") if isinstance(spec.instance.doc, Mapping) else None
            return {**common, "task": spec.task, "length": spec.length, "doc": spec.index, "metric": metric,
                    "score": 100 * value, "answers": answers, "prompt_sha": prompt_digest(spec.prompt)}
        if kind == "needle":
            from kvpress_lab.benchmarks.needle import is_correct

            passcode = self.needles[spec]
            return {**common, "task": "needle", "length": spec[0], "depth": spec[1], "passcode": passcode,
                    "correct": is_correct(result.text, passcode), "score": 100.0 * is_correct(result.text, passcode)}
        if kind == "ruler":
            from kvpress_lab.benchmarks.ruler import string_match_all

            sample = self.rulers[spec]
            return {**common, "task": spec[0], "length": spec[1], "answers": list(sample.answers),
                    "score": 100 * string_match_all(result.text, sample.answers)}
        if kind == "longbench":
            from kvpress_lab.benchmarks import longbench

            name, record = spec
            value = longbench.score_prediction(name, result.text, record["answers"], record.get("all_classes"))
            return {**common, "task": name, "length": None, "_id": record["_id"], "score": 100 * value}
        return {**common, "task": spec.get("label") or "prompt", "length": None, "score": None}


def _capped(default: int, cap: int | None) -> int:
    return default if cap is None else min(default, cap)


class _ModeRunner:
    """``run_sweep`` runner: one :class:`SampleGroups` per mode, each sample's cells on one shared prefill.

    Cells run in the order of the task entries that ask for them (a sample two entries share
    runs the first entry's cells with that entry and the second's later), sample-major within an
    entry. Each run of consecutive cells of one mode is one segment, planned by that mode's
    ``SampleGroups`` when it starts, so every sample of a segment is prefilled once.
    """

    def __init__(self, groups: Mapping[str, Any], samples: Mapping[str, tuple[str, str, Any]],
                 entries: Mapping[tuple[str, Any], Any], prefill_chunk: int | None, tasks: Sequence[Any]):
        self.groups, self.samples, self.entries, self.prefill_chunk = groups, samples, entries, prefill_chunk
        self.tasks = list(tasks)
        self._segments: list[tuple[tuple[str, int], list[Cell]]] = []

    def _entry(self, cell: Cell) -> int:
        task = self.samples[cell.sample][2][1]
        parts = [task.first, task.second] if isinstance(task, _EitherTask) else [task]
        while any(isinstance(p, _EitherTask) for p in parts):
            parts = [q for p in parts for q in ([p.first, p.second] if isinstance(p, _EitherTask) else [p])]
        return min(next(i for i, t in enumerate(self.tasks) if t is p) for p in parts if p.runs(cell.recipe, cell.size.value))

    def plan(self, todo: Sequence[Cell]) -> list[Cell]:
        position = {key: i for i, key in enumerate(self.samples)}
        ordered = sorted(todo, key=lambda c: (self._entry(c), position[c.sample]))  # stable: grid order within a sample
        self._segments = []
        for cell in ordered:
            mode = self.samples[cell.sample][0]
            entry = self._entry(cell)
            if not self._segments or self._segments[-1][0] != (mode, entry):
                self._segments.append(((mode, entry), []))
            self._segments[-1][1].append(cell)
        return ordered

    def warm_up(self, todo: Sequence[Cell]) -> float | None:
        if not todo:
            return None
        mode = self.samples[todo[0].sample][0]
        self.groups[mode].plan(todo[:1])
        return self.groups[mode].warm_up(todo[:1])

    def __call__(self, cell: Cell) -> dict[str, Any]:
        mode = self.samples[cell.sample][0]
        if self._segments and self._segments[0][1] and self._segments[0][1][0] == cell:  # a segment starts
            self.groups[mode].plan(self._segments.pop(0)[1])
        recipe = self.entries[(cell.recipe, cell.size)]
        row = self.groups[mode](cell)
        return {**row, "prefill_chunk": None if recipe is None else self.prefill_chunk,
                "recipe_config": None if recipe is None else recipe.to_dict()}


def _check_resume(path: pathlib.Path, entries: Mapping[tuple[str, Any], Any], samples: Mapping[str, Any]) -> None:
    """Refuse to resume a file whose rows ran another recipe under a label, or other lm-eval documents under a key."""
    from kvpress_lab.benchmarks.lm_eval_tasks import prompt_digest
    from kvpress_lab.benchmarks.results import read_rows

    if not path.exists():
        return
    digests: dict[str, str] = {}
    for row in read_rows(path):
        ratio = row.get("compression_ratio")
        try:
            size = CacheSize(budget=row.get("budget")) if ratio is None else CacheSize(ratio=ratio)
        except ValueError:
            continue  # not a cell row (the meta record) or a size no entry has
        key = (row.get("recipe"), size)
        if key in entries:
            expected = None if entries[key] is None else entries[key].to_dict()
            if _current_names(row.get("recipe_config")) != expected:
                raise BenchmarkInputError(
                    f"{path} holds rows of recipe {key[0]!r} at size {key[1].key} built with other settings than this "
                    f"configuration's ({_first_difference(_current_names(row.get('recipe_config')), expected)}); give the changed "
                    "recipe another label, or use another output folder.")
        sample = samples.get(row.get("sample"))
        if sample is not None and sample[1] == "lm_eval" and row.get("prompt_sha"):
            digests.setdefault(row["sample"], row["prompt_sha"])
    for key, digest in digests.items():
        spec = samples[key][2][0]
        if prompt_digest(spec.prompt) != digest:
            raise BenchmarkInputError(
                f"{path} holds answers to another prompt for sample {key} than the one lm-eval builds now (lm-eval's "
                "version, the task's lengths or the tokenizer changed); use another output folder.")


def _current_names(recorded: Any) -> Any:
    """A recorded recipe with its renamed scorer options under their current names (``n_sink`` -> ``num_sinks``):
    a file written before a rename resumes, as the recipe itself still reads the old name
    (:data:`kvpress_lab.sinks.RENAMED_FIELDS`)."""
    from kvpress_lab.sinks import RENAMED_FIELDS

    kwargs = recorded.get("scorer_kwargs") if isinstance(recorded, Mapping) else None
    if not isinstance(kwargs, Mapping) or not any(old in kwargs and new not in kwargs for old, new in RENAMED_FIELDS.items()):
        return recorded
    renamed = {RENAMED_FIELDS[key] if key in RENAMED_FIELDS and RENAMED_FIELDS[key] not in kwargs else key: value
               for key, value in kwargs.items()}
    return {**recorded, "scorer_kwargs": renamed}


def _first_difference(old: Any, new: Any) -> str:
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return f"{old!r} vs {new!r}"
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} in the file, {new.get(key)!r} now"
    return "no field differs"


def run_eval(config: EvalConfig, shard: tuple[int, int] = (0, 1)) -> pathlib.Path:
    """Run this shard of ``config``'s cells (skipping finished ones) and write the outputs; the results file.

    Raises
    ------
    BenchmarkInputError
        Anything in the configuration that cannot work, found before the model loads where it can be.
    """
    from kvpress_lab.benchmarks.commands import check_flags_fit_recipes, check_model_arguments, check_output_dir, load
    from kvpress_lab.benchmarks.results import model_settings, run_metadata
    from kvpress_lab.benchmarks.sample_groups import SampleGroups
    from kvpress_lab.benchmarks.sweep import finished_keys, run_sweep, select_shard

    entries = plan_recipes(config)
    args = _model_namespace(config)
    check_flags_fit_recipes(argparse.Namespace(prefill_chunk=config.prefill_chunk), list(entries.values()))
    check_model_arguments(args)
    out_dir = check_output_dir("output", config.output)
    samples = plan_samples(config)
    cells = plan_eval_cells(config, samples)
    results = out_dir / "results.jsonl"
    _check_resume(results, entries, samples)
    model, tokenizer = load(args)
    meta = run_metadata("eval", config.model.name, {f"{k[0]}@{k[1].value}": r for k, r in entries.items()},
                        seed=config.seed, **model_settings(model), config=config.resolved())
    share = None if config.share_prefill <= 1 else config.share_prefill
    rows = _Rows(config)
    modes = list(dict.fromkeys(item[0] for item in samples.values()))
    groups = {mode: SampleGroups(model, tokenizer, entries, samples, rows.prompt_of, rows.row_of, mode=mode,
                                 share=share, prefill_chunk=config.prefill_chunk) for mode in modes}
    runner = _ModeRunner(groups, samples, entries, config.prefill_chunk, config.tasks)
    _write_config(out_dir, config)
    todo = [c for c in select_shard(cells, shard) if c.key not in finished_keys(results)]
    warm = runner.warm_up(todo)
    if warm is not None:
        print(f"warm-up (full cache, first sample, not recorded): {warm:.2f} s", file=sys.stderr)
    report = run_sweep(cells, runner, results, {**meta, "benchmark": "eval"}, shard=shard, progress=config.progress)
    print(f"{results}: shard {shard[0]}/{shard[1]} ran {report['ran']} cells, skipped {report['skipped']} already done.")
    write_outputs(out_dir)
    return results


def _model_namespace(config: EvalConfig) -> argparse.Namespace:
    from kvpress_lab.benchmarks.commands import looks_like_path

    name = config.model.name
    return argparse.Namespace(model=str(pathlib.Path(name).expanduser()) if looks_like_path(name) else name,
                              device=config.model.device, dtype=config.model.dtype,
                              device_map=config.model.device_map, attn=config.model.attn)


def _write_config(out_dir: pathlib.Path, config: EvalConfig) -> None:
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(
        "# The resolved configuration of the last `kvpress-lab eval` run into this folder (every default filled in).\n"
        + yaml.safe_dump(config.resolved(), sort_keys=False), encoding="utf-8")


def write_outputs(out_dir: str | pathlib.Path) -> pathlib.Path:
    """``summary.csv`` of ``<out_dir>/results.jsonl`` (every shard's rows); its path."""
    from kvpress_lab.benchmarks.leaderboard import summary_rows, write_summary_csv
    from kvpress_lab.benchmarks.results import read_rows

    out_dir = pathlib.Path(out_dir)
    rows = [r for r in read_rows(out_dir / "results.jsonl") if r.get("score") is not None]
    path = write_summary_csv(summary_rows(rows), out_dir / "summary.csv")
    print(f"Wrote {path}")
    return path
