"""``kvpress-lab eval CONFIG.yaml``: the configuration file of a whole evaluation, read and checked.

A configuration names the model, the recipes (each with every :class:`~kvpress_lab.Recipe` field:
``scorer_kwargs``, ``allocator_kwargs``, ``executor_kwargs``, window, decoding compression, ...),
their sizes (budgets and compression ratios), the evaluation modes and the tasks (lm-eval tasks,
kvpress_lab's own generators, prompts of your own), and where the results go. Every ``run`` and
``bench`` flag has a key here (:data:`FLAG_KEYS`). Nothing in this module imports torch: the
command checks a configuration before any model loads.

Example (``results/docs/ruler/eval.yaml`` is a real one)::

    model: {name: smollm2-135m-instruct, dtype: float32, device: auto}
    output: results/eval/ruler
    modes: [query-aware]
    sizes: {ratios: [0.5], budgets: [128]}
    recipes:
      - full
      - snapkv
      - {preset: snapkv, label: snapkv-k5, scorer_kwargs: {kernel_size: 5}, ratios: [0.25, 0.5, 0.75]}
      - {label: mine, allocator: pyramid, scorer: snapkv_window, window: 16}
    tasks:
      - {kind: lm_eval, tasks: [niah_single_1], max_seq_lengths: [1024, 2048], limit: 20}
      - {kind: needle, lengths: [1024], depths: [0.1, 0.5, 0.9]}

>>> config = parse_config({"output": "results/eval/demo", "recipes": ["full", "snapkv"], "sizes": {"budgets": [64]},
...                        "tasks": [{"kind": "ruler", "tasks": ["niah_single"], "lengths": [256]}]})
>>> [(r.label, r.sizes) for r in config.recipes]
[('full', (None,)), ('snapkv', (64,))]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks.input_errors import BenchmarkInputError

__all__ = ["MODES", "TASK_KINDS", "FLAG_KEYS", "ModelConfig", "RecipeConfig", "TaskConfig", "LauncherConfig",
           "EvalConfig", "read_config", "parse_config", "FULL"]

FULL = "full"
MODES = ("query-aware", "query-agnostic")

#: Task kinds and the keys each takes (besides ``kind``, ``modes``, ``max_new_tokens``, ``recipes`` and ``sizes``:
#: a task runs only the recipes whose labels ``recipes`` lists and the sizes ``sizes`` lists, when given).
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "lm_eval": ("tasks", "max_seq_lengths", "limit", "tokenizer", "include_path"),
    "needle": ("lengths", "depths"),
    "ruler": ("tasks", "lengths", "samples"),
    "longbench": ("data_dir", "tasks", "limit", "max_length", "chat"),
    "prompt": ("prompt", "prompt_file", "question", "chat", "label"),
}

#: Keys of a recipe entry that are not :class:`~kvpress_lab.Recipe` fields.
_RECIPE_KEYS = ("label", "preset", "budgets", "ratios")

#: Every ``run`` and ``bench`` flag and the configuration key that does the same (``tests`` check it is complete).
FLAG_KEYS: dict[str, str] = {
    # model (run, every bench task)
    "--model": "model.name", "--device": "model.device", "--dtype": "model.dtype", "--device-map": "model.device_map",
    "--attn": "model.attn", "--seed": "seed",
    # recipes
    "--preset": "recipes[].preset", "--allocator": "recipes[].allocator", "--scorer": "recipes[].scorer",
    "--executor": "recipes[].executor", "--full": "recipes: [full]", "--recipes": "recipes",
    "--window": "recipe_defaults.window (or recipes[].window)",
    "--budget": "sizes.budgets (or recipes[].budgets)", "--budgets": "sizes.budgets (or recipes[].budgets)",
    "--ratio": "sizes.ratios (or recipes[].ratios)", "--ratios": "sizes.ratios (or recipes[].ratios)",
    "--decode-budget": "recipe_defaults.decode_budget (or recipes[].decode_budget)",
    "--compress-every": "recipe_defaults.compress_every (or recipes[].compress_every)",
    "--no-compress-prefill": "recipe_defaults.compress_prefill: false (or recipes[].compress_prefill)",
    "--prefill-chunk": "prefill_chunk",
    # how it runs
    "--mode": "modes (or tasks[].modes)", "--share-prefill": "share_prefill",
    "--no-share-prefill": "share_prefill: 1", "--no-progress": "progress: false",
    "--out": "output (a folder: results.jsonl, config.yaml, summary.csv)",
    "--json": "output (every row is JSON in results.jsonl)",
    "--shard": "kvpress-lab eval CONFIG --shard i/n (or the scheduler's environment)",
    "--launcher": "launcher.kind", "--shards": "launcher.shards", "--wait": "launcher.wait",
    "--slurm-partition": "launcher.partition", "--slurm-time": "launcher.time", "--slurm-gpus": "launcher.gpus",
    "--slurm-cpus": "launcher.cpus", "--slurm-mem": "launcher.mem", "--slurm-parallelism": "launcher.parallelism",
    "--slurm-folder": "launcher.folder", "--slurm-option": "launcher.options",
    # tasks
    "prompt": "tasks[kind=prompt].prompt", "--prompt-file": "tasks[kind=prompt].prompt_file",
    "--question": "tasks[kind=prompt].question", "--chat": "tasks[kind=prompt|longbench].chat",
    "--max-new-tokens": "tasks[].max_new_tokens", "--lengths": "tasks[kind=needle|ruler].lengths",
    "--depths": "tasks[kind=needle].depths", "--tasks": "tasks[kind=ruler|longbench|lm_eval].tasks",
    "--samples": "tasks[kind=ruler].samples", "--data-dir": "tasks[kind=longbench].data_dir",
    "--limit": "tasks[kind=longbench|lm_eval].limit", "--max-length": "tasks[kind=longbench].max_length",
    # bench speed / memory: timing benchmarks, not evaluations (run them with kvpress-lab bench on a quiet machine)
    "--decode-steps": "bench speed only", "--repeats": "bench speed only", "--length": "bench memory only",
    "--chunks": "bench memory only", "--decode-tokens": "bench memory only", "--in-process": "bench memory only",
}


def _error(where: str, message: str) -> BenchmarkInputError:
    return BenchmarkInputError(f"{where}: {message}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _error(where, f"expected a mapping of keys to values, got {type(value).__name__} {value!r}")
    return dict(value)


def _unknown(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    extra = sorted(set(data) - set(allowed))
    if extra:
        raise _error(where, f"unknown key(s) {', '.join(map(str, extra))}; expected some of {', '.join(allowed)}")


def _list(value: Any, where: str, item: type | tuple[type, ...], check: Any = None, what: str = "") -> tuple:
    if value is None:
        return ()
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, item) or (check is not None and not check(v)):
            raise _error(where, f"expected {what or 'a list'}, got {v!r} in {value!r}")
    return tuple(values)


def _int(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _error(where, f"expected an integer >= {low}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``model:``: what ``--model --device --dtype --device-map --attn`` give."""

    name: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: str = "float32"
    device_map: Any = None
    attn: str = "sdpa"


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """One ``recipes:`` entry: a label, the preset (or none), :class:`~kvpress_lab.Recipe` fields, its sizes.

    ``sizes`` holds budgets (int), ratio keys (``"r0.5"``) or ``None`` (the full cache, or a preset
    that takes no budget).
    """

    label: str
    preset: str | None
    fields: Mapping[str, Any]
    sizes: tuple[Any, ...]

    @property
    def is_full(self) -> bool:
        return self.label == FULL and self.preset is None and not self.fields


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One ``tasks:`` entry: its kind, its keys, the modes it runs in, its generation cap, and the recipes
    (labels) and size slots it runs (``None``: all; the full cache and budget-free presets pass any size filter)."""

    kind: str
    options: Mapping[str, Any]
    modes: tuple[str, ...]
    max_new_tokens: int | None
    recipes: tuple[str, ...] | None = None
    sizes: tuple[Any, ...] | None = None

    def runs(self, label: str, slot: Any) -> bool:
        """Whether this task runs recipe ``label`` at size ``slot``."""
        return (self.recipes is None or label in self.recipes) and (self.sizes is None or slot is None
                                                                     or slot in self.sizes)


@dataclasses.dataclass(frozen=True)
class LauncherConfig:
    """``launcher:``: a job array instead of one process (``--launcher --shards --slurm-*``)."""

    kind: str
    shards: int = 1
    wait: bool = False
    partition: str | None = None
    time: int = 60
    gpus: int = 1
    cpus: int | None = None
    mem: int | None = None
    parallelism: int | None = None
    folder: str = "results/slurm/%j"
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """A whole evaluation; :meth:`resolved` is what ``config.yaml`` in the output folder holds."""

    model: ModelConfig
    recipes: tuple[RecipeConfig, ...]
    tasks: tuple[TaskConfig, ...]
    output: str
    seed: int = 0
    share_prefill: int = 8
    prefill_chunk: int | None = None
    progress: bool = True
    launcher: LauncherConfig | None = None

    def resolved(self) -> dict[str, Any]:
        """Every setting with its default filled in, as plain YAML-ready data."""
        from kvpress_lab.recipe_labels import CacheSize

        def sizes(recipe: RecipeConfig) -> dict[str, list]:
            return {"budgets": [s for s in recipe.sizes if isinstance(s, int)],
                    "ratios": [CacheSize.parse(s).ratio for s in recipe.sizes if isinstance(s, str)]}

        return {
            "model": dataclasses.asdict(self.model), "output": self.output, "seed": self.seed,
            "share_prefill": self.share_prefill, "prefill_chunk": self.prefill_chunk, "progress": self.progress,
            "recipes": [FULL if r.is_full else {"label": r.label, **({"preset": r.preset} if r.preset else {}),
                                                **{k: _plain(v) for k, v in r.fields.items()}, **sizes(r)}
                        for r in self.recipes],
            "tasks": [{"kind": t.kind, **{k: _plain(v) for k, v in t.options.items()}, "modes": list(t.modes),
                       "max_new_tokens": t.max_new_tokens, "recipes": None if t.recipes is None else list(t.recipes),
                       "sizes": None if t.sizes is None else {
                           "budgets": [s for s in t.sizes if isinstance(s, int)],
                           "ratios": [CacheSize.parse(s).ratio for s in t.sizes if isinstance(s, str)]}}
                      for t in self.tasks],
            "launcher": None if self.launcher is None else {k: _plain(v) for k, v in
                                                             dataclasses.asdict(self.launcher).items()},
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_config(path: str | os.PathLike[str]) -> EvalConfig:
    """Read and check a YAML configuration file; a relative ``output`` stays relative to the working folder.

    Raises
    ------
    BenchmarkInputError
        A missing or unreadable file, invalid YAML, or any key or value that cannot work (named).
    """
    import yaml

    path = pathlib.Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkInputError(f"config file {path} does not exist.") from None
    except IsADirectoryError:
        raise BenchmarkInputError(f"config {path} is a folder; give the YAML file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkInputError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BenchmarkInputError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_config(data, where=str(path))


_TOP_KEYS = ("model", "output", "seed", "modes", "share_prefill", "prefill_chunk", "progress", "sizes", "recipes",
             "recipe_defaults", "tasks", "launcher")


def parse_config(data: Any, where: str = "config") -> EvalConfig:
    """Check a configuration's data (what the YAML file holds) and fill in its defaults."""
    data = _mapping(data, where)
    _unknown(data, _TOP_KEYS, where)
    model_data = _mapping(data.get("model"), f"{where}: model")
    _unknown(model_data, [f.name for f in dataclasses.fields(ModelConfig)], f"{where}: model")
    model = ModelConfig(**model_data)
    from kvpress_lab.benchmarks.commands import parse_device

    try:
        parse_device(model.device)
    except ValueError as exc:
        raise _error(f"{where}: model.device", str(exc)) from None
    if model.dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise _error(f"{where}: model.dtype", f"expected float32, bfloat16, float16 or auto, got {model.dtype!r}")
    if model.attn not in ("sdpa", "eager", "flash_attention_2"):
        raise _error(f"{where}: model.attn", f"expected sdpa, eager or flash_attention_2, got {model.attn!r}")
    modes = _modes(data.get("modes", ["query-aware"]), f"{where}: modes")
    sizes = _mapping(data.get("sizes"), f"{where}: sizes")
    _unknown(sizes, ("budgets", "ratios"), f"{where}: sizes")
    budgets, ratios = _sizes(sizes, f"{where}: sizes")
    defaults = _mapping(data.get("recipe_defaults"), f"{where}: recipe_defaults")
    recipes = _recipes(data.get("recipes"), budgets, ratios, defaults, f"{where}: recipes")
    tasks = _tasks(data.get("tasks"), modes, [r.label for r in recipes], f"{where}: tasks")
    share = _int(data.get("share_prefill", 8), f"{where}: share_prefill", 1)
    chunk = data.get("prefill_chunk")
    if chunk is not None:
        _int(chunk, f"{where}: prefill_chunk", 1)
        if share > 1 and "share_prefill" in data:
            raise _error(where, f"share_prefill {share} compresses several recipes from one one-pass prefill, but "
                                f"prefill_chunk {chunk} prefills every cell in chunks of its own; drop one of them.")
    progress = data.get("progress", True)
    if not isinstance(progress, bool):
        raise _error(f"{where}: progress", f"expected true or false, got {progress!r}")
    output = data.get("output")
    if not isinstance(output, str) or not output:
        raise _error(f"{where}: output", f"expected the folder the results go to (e.g. results/eval/run1), got {output!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _error(f"{where}: seed", f"expected an integer, got {seed!r}")
    launcher = None if data.get("launcher") is None else _launcher(data["launcher"], f"{where}: launcher")
    return EvalConfig(model, recipes, tasks, output, seed, share, chunk, progress, launcher)


def _modes(value: Any, where: str) -> tuple[str, ...]:
    modes = _list(value, where, str, lambda m: m in MODES, f"modes among {', '.join(MODES)}")
    if not modes:
        raise _error(where, f"expected at least one of {', '.join(MODES)}")
    return tuple(dict.fromkeys(modes))


def _sizes(data: Mapping[str, Any], where: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    budgets = _list(data.get("budgets"), f"{where}.budgets", int, lambda b: b >= 1, "budgets: integers >= 1")
    ratios = _list(data.get("ratios"), f"{where}.ratios", (int, float), lambda r: 0 <= r < 1,
                   "compression ratios in [0, 1)")
    return tuple(dict.fromkeys(budgets)), tuple(dict.fromkeys(float(r) for r in ratios))


def _recipes(value: Any, budgets: tuple[int, ...], ratios: tuple[float, ...], defaults: Mapping[str, Any],
             where: str) -> tuple[RecipeConfig, ...]:
    from kvpress_lab.recipe_labels import CacheSize

    if not isinstance(value, list) or not value:
        raise _error(where, f"expected a list of recipes (preset names or mappings), got {value!r}")
    field_names = _recipe_fields()
    _unknown(defaults, field_names, f"{where[: -len(': recipes')]}: recipe_defaults")
    out: list[RecipeConfig] = []
    for position, entry in enumerate(value):
        here = f"{where}[{position}]"
        if isinstance(entry, str):
            entry = {"preset": entry} if entry != FULL else {"label": FULL}
        entry = _mapping(entry, here)
        _unknown(entry, (*_RECIPE_KEYS, *field_names), here)
        preset = entry.get("preset")
        if preset is not None and not isinstance(preset, str):
            raise _error(f"{here}.preset", f"expected a preset name, got {preset!r}")
        fields = {k: v for k, v in entry.items() if k not in _RECIPE_KEYS}
        label = entry.get("label", preset if preset is not None else None)
        if label is None:
            raise _error(here, "a recipe built from fields (allocator, scorer, ...) needs a label")
        if not isinstance(label, str) or not label or "|" in label:
            raise _error(f"{here}.label", f"expected a non-empty name without '|', got {label!r}")
        if label == FULL:
            if preset is not None or fields or "budgets" in entry or "ratios" in entry:
                raise _error(here, "'full' is the uncompressed cache: it takes no preset, field or size")
            out.append(RecipeConfig(FULL, None, {}, (None,)))
            continue
        if preset is None and "scorer" not in fields and "allocator" not in fields:
            raise _error(here, "expected a preset, or an allocator and/or scorer")
        fields = {**defaults, **fields}
        own_budgets, own_ratios = _sizes({k: entry[k] for k in ("budgets", "ratios") if k in entry}, here)
        if "budgets" not in entry and "ratios" not in entry:
            own_budgets, own_ratios = budgets, ratios
        slots: list[Any] = [*own_budgets, *(CacheSize(ratio=r).value for r in own_ratios)]
        if "budget" in fields or "compression_ratio" in fields:
            if "budgets" in entry or "ratios" in entry:
                raise _error(here, "give budget/compression_ratio or budgets/ratios, not both")
            slots = [None]  # the size is one of its fields
        elif _budget_free(preset):
            slots = [None]
        elif not slots:
            raise _error(here, "no size: give sizes.budgets / sizes.ratios, or this recipe's budgets / ratios")
        out.append(RecipeConfig(label, preset, fields, tuple(slots)))
    labels = [r.label for r in out]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise _error(where, f"labels must be unique, {', '.join(repeated)} appear(s) twice; give one a 'label'")
    return tuple(out)


def _recipe_fields() -> tuple[str, ...]:
    from kvpress_lab.recipe import Recipe

    return tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "preset_name")


def _budget_free(preset: str | None) -> bool:
    if preset is None:
        return False
    from kvpress_lab.benchmarks.sweep import budget_free

    return budget_free(preset)


def _tasks(value: Any, modes: tuple[str, ...], labels: Sequence[str], where: str) -> tuple[TaskConfig, ...]:
    if not isinstance(value, list) or not value:
        raise _error(where, f"expected a list of tasks, each a mapping with a 'kind' ({', '.join(TASK_KINDS)}), got {value!r}")
    out = []
    for position, entry in enumerate(value):
        here = f"{where}[{position}]"
        entry = _mapping(entry, here)
        kind = entry.pop("kind", None)
        if kind not in TASK_KINDS:
            raise _error(f"{here}.kind", f"expected one of {', '.join(TASK_KINDS)}, got {kind!r}")
        task_modes = _modes(entry.pop("modes"), f"{here}.modes") if "modes" in entry else modes
        cap = entry.pop("max_new_tokens", None)
        if cap is not None:
            _int(cap, f"{here}.max_new_tokens", 1)
        only = _list(entry.pop("recipes", None), f"{here}.recipes", str, what="recipe labels")
        unknown_labels = sorted(set(only) - set(labels))
        if unknown_labels:
            raise _error(f"{here}.recipes", f"no recipe is labelled {', '.join(unknown_labels)}; labels: {', '.join(labels)}")
        sizes = _mapping(entry.pop("sizes", None), f"{here}.sizes")
        _unknown(sizes, ("budgets", "ratios"), f"{here}.sizes")
        budgets, ratios = _sizes(sizes, f"{here}.sizes")
        _unknown(entry, TASK_KINDS[kind], f"{here} ({kind})")
        _check_task(kind, entry, task_modes, here)
        from kvpress_lab.recipe_labels import CacheSize

        slots = (*budgets, *(CacheSize(ratio=r).value for r in ratios)) if sizes else None
        out.append(TaskConfig(kind, entry, task_modes, cap, tuple(only) or None, slots))
    return tuple(out)


def _check_task(kind: str, entry: dict[str, Any], modes: tuple[str, ...], here: str) -> None:
    if kind in ("lm_eval", "ruler") and not _list(entry.get("tasks"), f"{here}.tasks", str, what="task names"):
        raise _error(f"{here}.tasks", "expected at least one task name")
    for key in ("lengths", "max_seq_lengths"):
        if key in entry:
            entry[key] = list(_list(entry[key], f"{here}.{key}", int, lambda n: n >= 1, "lengths: integers >= 1"))
    for key in ("limit", "samples", "max_length"):
        if entry.get(key) is not None:
            _int(entry[key], f"{here}.{key}", 1)
    if "depths" in entry:
        entry["depths"] = [float(d) for d in _list(entry["depths"], f"{here}.depths", (int, float),
                                                   lambda d: 0 <= d <= 1, "depths in [0, 1]")]
    if kind == "needle":
        entry.setdefault("lengths", [1024, 2048, 4096])
        entry.setdefault("depths", [0.0, 0.25, 0.5, 0.75, 1.0])
    if kind == "ruler":
        entry.setdefault("lengths", [2048])
        entry.setdefault("samples", 5)
    if kind == "longbench" and not entry.get("data_dir"):
        raise _error(f"{here}.data_dir", "LongBench needs the folder of the official <task>.jsonl files")
    if kind == "longbench":
        entry.setdefault("max_length", 4096)
        entry.setdefault("chat", "auto")
    if kind == "prompt":
        if (entry.get("prompt") is None) == (entry.get("prompt_file") is None):
            raise _error(here, "give the prompt text (prompt) or a file (prompt_file), exactly one")
        if "query-agnostic" in modes and not entry.get("question"):
            raise _error(here, "query-agnostic mode needs a question (the text appended after the compressed prompt)")
        if "query-agnostic" in modes and entry.get("chat"):
            raise _error(here, "chat: true puts the question inside the chat template, so nothing is left to append "
                               "after compression in query-agnostic mode; drop one of them")


def _launcher(value: Any, where: str) -> LauncherConfig:
    data = _mapping(value, where)
    _unknown(data, [f.name for f in dataclasses.fields(LauncherConfig)], where)
    if data.get("kind") not in ("slurm", "local"):
        raise _error(f"{where}.kind", f"expected slurm or local, got {data.get('kind')!r}")
    for key, low in (("shards", 1), ("time", 1), ("gpus", 0), ("cpus", 1), ("mem", 1), ("parallelism", 1)):
        if data.get(key) is not None:
            _int(data[key], f"{where}.{key}", low)
    data["options"] = {str(k): str(v) for k, v in _mapping(data.get("options"), f"{where}.options").items()}
    return LauncherConfig(**data)
