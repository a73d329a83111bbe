"""``kvpress-lab calibrate``: fit a learned-allocator profile and write it to a file.

torch and the calibration code are imported by the handler, not here: building the parser
(``kvpress-lab calibrate --help``) must stay light.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib

from kvpress_lab.cli.command import Command
from kvpress_lab.cli.values import device
from kvpress_lab.profile import STATISTICS, ProfileError

__all__ = ["COMMAND", "add_calibrate_arguments", "run_calibrate"]


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvpress-lab calibrate``."""
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name or path (default: the embedded model)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts-file", help="text file of calibration prompts, separated by blank lines")
    source.add_argument("--synthetic", type=int, metavar="N", help="N seeded synthetic prompts (default 8)")
    parser.add_argument("--length", type=int, default=1024, help="tokens per prompt (synthetic: exact, file: at most)")
    parser.add_argument("--window", type=int, default=32, help="observation window W (default 32)")
    parser.add_argument("--statistic", choices=STATISTICS, default="entropy", help="per-layer statistic (default entropy)")
    parser.add_argument("--seed", type=int, help="seed of the synthetic prompts (default 0; not with --prompts-file)")
    parser.add_argument("--device", type=device, default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps, ...")
    parser.add_argument("--out", required=True, help="where to write the profile JSON")


def run_calibrate(args: argparse.Namespace) -> int:
    """Handler of ``kvpress-lab calibrate``: fit a profile and write it to ``--out``.

    Every check that needs no model (flag values, ``--model`` path, device, output path) runs
    before the model loads.
    """
    import torch

    from kvpress_lab.analysis.synthetic import synthetic_prompts
    from kvpress_lab.calibration import calibrate
    from kvpress_lab.benchmarks.commands import (
        UsageError, check_device, check_model, check_output_file, looks_like_path, model_load_error,
    )
    from kvpress_lab.errors import KVPressLabError
    from kvpress_lab.models import load_model

    if args.prompts_file and args.seed is not None:
        raise UsageError("--seed does nothing with --prompts-file (it seeds the synthetic prompts); "
                         "drop --seed, or use --synthetic N instead of --prompts-file.")
    seed = 0 if args.seed is None else args.seed
    for flag, value, minimum in (("--length", args.length, 2), ("--window", args.window, 1), ("--synthetic", args.synthetic, 1)):
        if value is not None and value < minimum:
            raise ProfileError(f"calibrate {flag} must be >= {minimum}, got {value}.")
    text = ""
    if args.prompts_file:
        try:
            text = pathlib.Path(args.prompts_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"calibrate cannot read --prompts-file {args.prompts_file!r}: {exc}.") from None
    check_model(str(args.model))
    check_device(args.device)
    check_output_file("--out", args.out)
    source = os.path.expanduser(args.model) if looks_like_path(str(args.model)) else args.model
    try:
        model, tokenizer = load_model(source, device=args.device)
    except KVPressLabError:
        raise
    except OSError as exc:
        raise model_load_error(args.model, exc) from exc
    if args.prompts_file:
        chunks = [c.strip() for c in text.split("\n\n") if c.strip()]
        prompts = [torch.tensor(tokenizer(c, add_special_tokens=False)["input_ids"][-args.length:]) for c in chunks]
        prompts = [p for p in prompts if p.numel() >= 2]
        if not prompts:
            raise ProfileError(f"--prompts-file {args.prompts_file!r} holds no prompt of 2 tokens or more.")
        settings = {"source": str(args.prompts_file)}
    else:
        count = 8 if args.synthetic is None else args.synthetic
        prompts = synthetic_prompts(tokenizer, count, args.length, seed=seed)
        settings = {"source": "synthetic", "seed": seed}
    profile = calibrate(model, prompts, window=args.window, statistic=args.statistic, model_name=str(args.model))
    profile = dataclasses.replace(profile, settings={**profile.settings, **settings})
    path = profile.save(args.out)
    print(f"Wrote a {profile.num_layers}-layer {profile.statistic} profile of {profile.model} "
          f"({len(prompts)} prompts) to {path}")
    return 0


COMMAND = Command("fit a per-layer budget profile for the `learned` allocator", add_calibrate_arguments, run_calibrate,
                  ("kvpress-lab calibrate --out profile.json",
                   "kvpress-lab calibrate --prompts-file prompts.txt --length 2048 --out profile.json"))
