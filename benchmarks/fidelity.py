"""Fidelity to NVIDIA kvpress: each kvpress 0.5.5 press and the kvpress_lab recipe that reproduces it, side by side.

Both libraries run on the same float32 weights (the embedded SmolLM2-135M-Instruct, sdpa; kvpress
loads the same local checkpoint folder in a side environment), on the same token ids: prompts of
this harness's own (:mod:`.fidelity_prompts`, about 1000 and 2000 tokens by default), the whole
context compressed, the question asked on the compressed cache. For every case of the mapping
(:mod:`.fidelity_cases`), ratio and prompt the table gives the Jaccard of the kept positions per
layer and KV head (mean, min, heads identical), both greedy answers and the largest absolute
difference of the first decoding step's logits; for kvpress's randomly sketched presses
(leverage, compactor) also kvpress's own spread (seed vs seed + 1). A case whose preset is not
registered is reported "preset missing"; a run that fails reports its error. The kept positions
are recovered as :mod:`.kvpress_side` describes, on both sides with the same helpers.

Writes ``OUT/fidelity.json`` (every number, per layer and head), ``OUT/fidelity.md`` (the table,
also printed) and the table as a reStructuredText ``list-table`` (``--table``, default
``docs/howto/kvpress-fidelity-table.rst``, included by the migration page). ``OUT/job/`` keeps
the job and kvpress's raw records.

``--kvzip-timing T`` instead times ``(prefill + KVzip scoring and compression) / plain prefill``
at ``T`` tokens, for kvpress's ``KVzipPress`` (side environment) and our ``--timing-recipe``
(``kvzip``: also its unfused reference scoring, ``scorer_kwargs={"fuse": False}``, and the Jaccard
of the two kept sets), interleaved repeats, medians, ``--threads`` threads.

Run::

    bash scripts/kvpress_env.sh                      # once: .kvpress-venv with kvpress 0.5.5
    OMP_NUM_THREADS=1 python -m kvpress_lab.benchmarks.fidelity
    python -m kvpress_lab.benchmarks.fidelity --cases snapkv knorm --recipe 'knorm={"scorer": "knorm"}'
    python -m kvpress_lab.benchmarks.fidelity --kvzip-timing 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from kvpress_lab.benchmarks import kvpress_side
from kvpress_lab.benchmarks.fidelity_cases import PresetMissing, build_recipe, case_names, get_case, parse_override
from kvpress_lab.benchmarks.fidelity_report import compare, markdown_table, missing_row, rst_table

__all__ = ["check_kvpress_python", "plan", "run_side", "measure", "measure_kvzip_timing", "main"]

DEFAULT_KVPRESS_PYTHON = Path(".kvpress-venv/bin/python")
DEFAULT_TABLE = Path("docs/howto/kvpress-fidelity-table.rst")
SIDE_SCRIPT = Path(kvpress_side.__file__)


def check_kvpress_python(path: Path) -> Path:
    """``path`` if it is an executable file, else ``FileNotFoundError`` saying how to build the side environment."""
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"No kvpress side environment at {str(path)!r}: build it with `bash scripts/kvpress_env.sh` "
            "(or pass --kvpress-python PATH to a Python with kvpress 0.5.5 and transformers < 5.3).")
    return path


def plan(cases: Sequence[str], ratios: Sequence[float], overrides: Mapping[str, object], prompts: Sequence[str],
         seed: int, decoding: Mapping[str, int]) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """What to run: ``(recipes, kvpress runs, our runs, rows of cases that cannot run)``.

    ``recipes`` maps ``(case, ratio)`` (``ratio`` ``None`` for the decoding case) to
    ``(recipe, label)``; a run is ``{"case", "ratio", "prompt", "seed"}``; the decoding case runs
    on the prompt named ``"decoding"``; cases with a random sketch also run kvpress with ``seed + 1``.
    """
    recipes: dict = {}
    kvpress_runs: list[dict] = []
    our_runs: list[dict] = []
    missing: list[dict] = []
    for name in cases:
        case = get_case(name)
        override = overrides.get(name)
        label = case.preset if override is None else (override if isinstance(override, str)
                                                      else json.dumps(override, separators=(",", ":")))
        for ratio in [None] if case.decoding else ratios:
            try:
                recipes[(name, ratio)] = (build_recipe(case, ratio, override, decoding), label)
            except PresetMissing:
                missing.append(missing_row(case, label, None, "preset missing"))
                break
            except (TypeError, ValueError) as exc:
                missing.append(missing_row(case, label, ratio, f"error: recipe: {exc}"))
                continue
            for prompt in ["decoding"] if case.decoding else prompts:
                run = {"case": name, "ratio": ratio, "prompt": prompt, "seed": seed}
                our_runs.append(run)
                kvpress_runs.append(run)
                if case.spread:
                    kvpress_runs.append({**run, "seed": seed + 1})
    return recipes, kvpress_runs, our_runs, missing


def run_side(python: Path, command: str, job_dir: Path, threads: int) -> None:
    """Run :mod:`.kvpress_side` ``command`` on ``job_dir`` with the side environment's ``python``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    # -I (isolated): no PYTHONPATH, no user site, and not the script's folder (the benchmark modules
    # beside it) on sys.path: the side sees its own environment's packages only.
    result = subprocess.run([str(python), "-I", str(SIDE_SCRIPT), command, str(job_dir)], env=env)
    if result.returncode != 0:
        raise RuntimeError(f"The kvpress side ({python} {SIDE_SCRIPT.name} {command}) exited with status "
                           f"{result.returncode}; its error is printed above.")


def _load(model_name: str | None):
    import transformers

    from kvpress_lab.models import embedded_checkpoint_dir, load_model

    transformers.utils.logging.disable_progress_bar()
    if model_name is None:
        model, tokenizer = load_model()
        return model, tokenizer, embedded_checkpoint_dir()
    model, tokenizer = load_model(model_name, local_files_only=True)
    return model, tokenizer, Path(model_name).resolve()


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def measure(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict:
    """Run both sides and compare them; returns the JSON written to ``args.out / "fidelity.json"``."""
    from kvpress_lab.benchmarks.fidelity_ours import run_ours
    from kvpress_lab.benchmarks.fidelity_prompts import build_prompt, build_prompts, continuation_ids

    python = check_kvpress_python(args.kvpress_python)
    overrides = dict(parse_override(text) for text in args.recipe)
    torch.set_num_threads(args.threads)
    model, tokenizer, model_path = _load(args.model)
    prompts = build_prompts(tokenizer, args.lengths, args.seed)
    decoding = {"compression_interval": args.compression_interval, "target_size": args.target_size,
                "steps": args.decoding_steps, "context_tokens": args.decoding_context}
    recipes, kvpress_runs, our_runs, missing = plan(args.cases, args.ratios, overrides, [p.name for p in prompts],
                                                    args.seed, decoding)
    ids = {"prompts": {p.name: {"context_ids": p.context_ids, "question_ids": p.question_ids} for p in prompts}}
    ids["prompts"]["decoding"] = {"context_ids": build_prompt(tokenizer, args.decoding_context, 0, args.seed).context_ids}
    ids["continuation_ids"] = continuation_ids(tokenizer, args.decoding_steps, args.seed)
    job = {"model_path": str(model_path), "threads": args.threads, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
           "eos_token_ids": _eos_ids(model), "decoding": decoding, "runs": kvpress_runs}
    job_dir = args.out / "job"
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(job, indent=1))
    torch.save(ids, job_dir / "job_ids.pt")
    seconds = {}
    start = time.perf_counter()
    if kvpress_runs:
        run_side(python, "run", job_dir, args.threads)
    seconds["kvpress"] = time.perf_counter() - start
    side = torch.load(job_dir / "kvpress.pt") if kvpress_runs else {"runs": [], "meta": {}}
    start = time.perf_counter()
    ours = run_ours(model, our_runs, {key: value[0] for key, value in recipes.items()}, ids, job)
    seconds["ours"] = time.perf_counter() - start
    rows = _rows(recipes, side["runs"], ours, tokenizer) + missing
    order = {name: i for i, name in enumerate(case_names())}
    rows.sort(key=lambda r: (order[r["case"]], -1 if r["ratio"] is None else r["ratio"], r["tokens"] or 0))
    return {"rows": rows, "meta": {
        "command": " ".join(["python -m kvpress_lab.benchmarks.fidelity", *(shlex.quote(a) for a in argv)]),
        "argv": ["python", "-m", "kvpress_lab.benchmarks.fidelity", *argv], "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model_path": str(model_path), "threads": args.threads, "seed": args.seed, "ratios": list(args.ratios),
        "lengths": list(args.lengths), "prompt_tokens": {p.name: int(p.context_ids.shape[1]) for p in prompts},
        "max_new_tokens": args.max_new_tokens, "decoding": decoding, "overrides": overrides, "wall_s": seconds,
        "kvpress_side": side["meta"], "recipes": {f"{c}|{r}": rec.to_dict() for (c, r), (rec, _) in recipes.items()},
        "versions": _versions()}}


def _rows(recipes: Mapping, side_runs: Sequence[Mapping], ours: Sequence[Mapping], tokenizer) -> list[dict]:
    def key(run: Mapping) -> tuple:
        return run["case"], run["ratio"], run["prompt"], run["seed"]

    by_key = {key(run): run for run in side_runs}
    rows = []
    for record in ours:
        case = get_case(record["case"])
        spread = by_key.get((*key(record)[:3], record["seed"] + 1)) if case.spread else None
        row = compare(case, recipes[(record["case"], record["ratio"])][1], by_key[key(record)], record,
                      lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip(), spread)
        rows.append({**row, "prompt": record["prompt"]})
    return rows


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("kvpress-lab", "transformers", "torch")}


def measure_kvzip_timing(args: argparse.Namespace) -> dict:
    """``(prefill + KVzip scoring) / plain prefill`` at ``args.kvzip_timing`` tokens: kvpress's, then ours."""
    from kvpress_lab import Recipe
    from kvpress_lab.benchmarks.fidelity_prompts import build_prompt
    from kvpress_lab.engine.prefill import forward_cache

    python = check_kvpress_python(args.kvpress_python)
    torch.set_num_threads(args.threads)
    model, tokenizer, model_path = _load(args.model)
    length = args.kvzip_timing
    ids = build_prompt(tokenizer, length + 64, 0, args.seed).context_ids[:, :length]
    if ids.shape[1] != length:
        raise ValueError(f"The timing prompt has {ids.shape[1]} tokens, fewer than --kvzip-timing {length}.")
    job_dir = args.out / "kvzip_timing"
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "timing.json").write_text(json.dumps({"model_path": str(model_path), "threads": args.threads,
                                                     "repeats": args.repeats, "ratio": args.timing_ratio}))
    torch.save(ids, job_dir / "timing_ids.pt")
    run_side(python, "kvzip-timing", job_dir, args.threads)
    theirs = json.loads((job_dir / "kvzip_timing.json").read_text())
    recipe = Recipe.preset(args.timing_recipe, compression_ratio=args.timing_ratio)
    settings = {"plain": lambda: forward_cache(model, ids), "kvzip": lambda: recipe.prefill(model, ids)}
    reference = None
    if "fuse" in recipe.strategies.scorer.__dataclass_fields__:  # kvzip: also its unfused reference scoring
        reference = Recipe.preset(args.timing_recipe, compression_ratio=args.timing_ratio, scorer_kwargs={"fuse": False})
        settings["kvzip_reference"] = lambda: reference.prefill(model, ids)
    with torch.no_grad():
        forward_cache(model, ids)  # warm-up
        seconds = kvpress_side.interleaved_seconds(settings, args.repeats)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ours = {"recipe": recipe.to_dict(), "seconds": seconds, "median_s": medians,
            "kvzip_over_plain": medians["kvzip"] / medians["plain"]}
    if reference is not None:
        ours["reference_over_plain"] = medians["kvzip_reference"] / medians["plain"]
        ours["kept_jaccard_fused_vs_reference"] = _kept_jaccard(_selections(model, recipe, ids), _selections(model, reference, ids))
    return {"length": length, "threads": args.threads, "repeats": args.repeats, "ratio": args.timing_ratio,
            "kvpress": theirs, "ours": ours, "versions": _versions()}


def _selections(model, recipe, ids) -> dict:
    """``{layer: Selection}`` of one compressed prefill of ``ids`` with ``recipe``."""
    with torch.no_grad(), recipe.apply(model, record_indices=True) as session:
        model.model(input_ids=ids, use_cache=True)
    return dict(session.selections)


def _kept_jaccard(first: Mapping, second: Mapping) -> float:
    """Mean Jaccard index of two runs' selections over every layer, row and KV head."""
    values = []
    for layer, a in first.items():
        b = second[layer]
        for row in range(a.indices.shape[0]):
            for head in range(a.indices.shape[1]):
                x = set(a.indices[row, head][a.valid[row, head]].tolist())
                y = set(b.indices[row, head][b.valid[row, head]].tolist())
                values.append(len(x & y) / max(len(x | y), 1))
    return sum(values) / max(len(values), 1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvpress_lab.benchmarks.fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=case_names(), choices=case_names(), metavar="CASE",
                        help="cases of the mapping to run (default: all): " + " ".join(case_names()))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75], help="compression ratios")
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 2000], help="document tokens per prompt")
    parser.add_argument("--seed", type=int, default=0, help="filler seed and torch seed before each prefill (default 0)")
    parser.add_argument("--recipe", action="append", default=[], metavar="CASE=SPEC",
                        help="replace a case's recipe: a preset name or a JSON object of Recipe fields (with "
                             "\"preset\": NAME to start from one); repeatable")
    parser.add_argument("--out", type=Path, default=Path("results/fidelity"), help="output folder")
    parser.add_argument("--table", default=str(DEFAULT_TABLE), help="where to write the .rst table ('': nowhere)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (default 1)")
    parser.add_argument("--kvpress-python", type=Path, default=DEFAULT_KVPRESS_PYTHON,
                        help="Python of the kvpress side environment (scripts/kvpress_env.sh)")
    parser.add_argument("--model", default=None, help="a local checkpoint folder (default: the embedded model)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="greedy answer tokens (default 24)")
    decoding = parser.add_argument_group("decoding case (DecodingPress)")
    decoding.add_argument("--decoding-context", type=int, default=1000, help="document tokens (default 1000)")
    decoding.add_argument("--compression-interval", type=int, default=32, help="steps between compressions (32)")
    decoding.add_argument("--target-size", type=int, default=512, help="entries kept per layer (512)")
    decoding.add_argument("--decoding-steps", type=int, default=160, help="teacher-forced tokens M (160)")
    timing = parser.add_argument_group("KVzip timing (instead of the table)")
    timing.add_argument("--kvzip-timing", type=int, default=None, metavar="T", help="time KVzip at T tokens")
    timing.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    timing.add_argument("--timing-ratio", type=float, default=0.5, help="compression ratio while timing (0.5)")
    timing.add_argument("--timing-recipe", default="kvzip", help="our preset timed (default kvzip)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.threads < 1 or args.max_new_tokens < 1 or args.repeats < 1:
        raise SystemExit("--threads, --max-new-tokens and --repeats must be >= 1.")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.kvzip_timing is not None:
        result = measure_kvzip_timing(args)
        (args.out / "kvzip_timing.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({"length": result["length"], "threads": result["threads"],
                          "kvpress_kvzip_over_plain": result["kvpress"]["kvzip_over_plain"],
                          "ours_kvzip_over_plain": result["ours"]["kvzip_over_plain"],
                          "ours_reference_over_plain": result["ours"].get("reference_over_plain"),
                          "kept_jaccard_fused_vs_reference": result["ours"].get("kept_jaccard_fused_vs_reference")},
                         indent=1))
        return 0
    result = measure(args, argv)
    (args.out / "fidelity.json").write_text(json.dumps(result, indent=1))
    table = markdown_table(result["rows"])
    (args.out / "fidelity.md").write_text(table + "\n")
    if args.table:
        header = f".. Generated by: {result['meta']['command']} ({result['meta']['date']})\n\n"
        Path(args.table).write_text(header + rst_table(result["rows"]))
    print(table)
    print(f"\nkvpress side {result['meta']['wall_s']['kvpress']:.0f} s, ours {result['meta']['wall_s']['ours']:.0f} s; "
          f"{args.out / 'fidelity.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
