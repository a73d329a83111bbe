"""Option groups several subcommands share, and the checks on them that run once, before anything loads.

``--model --device --dtype --device-map --attn [--seed]`` (:func:`add_model_arguments`), the
long-context flags (:func:`add_long_context_arguments`, checked by
:func:`check_long_context_flags`), shared prefills and ratios (:func:`add_share_arguments`), and
the sweeps' recipes and budgets (:func:`add_sweep_arguments`, settled by :func:`resolve_budgets`).
"""

from __future__ import annotations

import argparse

from kvpress_lab.cli import values

__all__ = ["DTYPES", "add_model_arguments", "add_long_context_arguments", "check_long_context_flags",
           "add_share_arguments", "add_sweep_arguments", "resolve_budgets"]

#: The ``--dtype`` values: floating-point weight dtypes a model can be loaded in.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    """``--model --device --dtype --device-map --attn`` (and ``--seed`` where the command generates prompts)."""
    from kvpress_lab.models import EMBEDDED_MODEL_NAME

    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME,
                        help="embedded model name (default), local checkpoint folder or hub id")
    parser.add_argument("--device", type=values.device, default="auto",
                        help="auto (default: cuda when available, else cpu), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--dtype", default="float32", choices=(*DTYPES, "auto"),
                        help="float32 (default), bfloat16, float16 or auto (the checkpoint's dtype)")
    parser.add_argument("--device-map", type=values.device_map,
                        help="let from_pretrained place the weights: auto (spread over the visible GPUs), balanced, "
                             "sequential, or a JSON object / .json file of module -> device; not with --device")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                        help="attention implementation (default sdpa; flash_attention_2 needs a GPU and flash-attn)")
    if seed:
        parser.add_argument("--seed", type=values.integer("--seed"), default=0, help="seed of the generated prompts (default 0)")


def add_long_context_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prefill-chunk``, ``--decode-budget``, ``--compress-every``, ``--no-compress-prefill`` (see docs/howto/long-contexts)."""
    parser.add_argument("--prefill-chunk", type=values.int_at_least(1, "--prefill-chunk"), metavar="C",
                        help="prefill the compressed part in chunks of C tokens, compressing after each (each layer "
                             "holds at most its budget + C); the full cache runs unchunked")
    parser.add_argument("--decode-budget", type=values.int_at_least(1, "--decode-budget"), metavar="N",
                        help="decoding-time compression: cut each layer back to N entries during generation")
    parser.add_argument("--compress-every", type=values.int_at_least(1, "--compress-every"), metavar="K",
                        help="with --decode-budget: re-compress every K generated tokens (default: the recipe's, 16)")
    parser.add_argument("--no-compress-prefill", dest="compress_prefill", action="store_const", const=False,
                        default=None, help="with --decode-budget: leave the prompt uncompressed, compress the generation only")


def check_long_context_flags(args: argparse.Namespace) -> None:
    """``--compress-every`` and ``--no-compress-prefill`` need ``--decode-budget`` (checked once, when the command starts;
    whether the recipes take the flags is :func:`~kvpress_lab.benchmarks.commands.check_flags_fit_recipes`).

    Raises
    ------
    UsageError
        Naming the flags that would do nothing.
    """
    from kvpress_lab.benchmarks.input_errors import UsageError

    if getattr(args, "decode_budget", None) is not None:
        return
    alone = [flag for flag, dest in (("--compress-every", "compress_every"), ("--no-compress-prefill", "compress_prefill"))
             if getattr(args, dest, None) is not None]
    if alone:
        raise UsageError(f"{' and '.join(alone)} {'do' if len(alone) > 1 else 'does'} nothing without --decode-budget "
                         "(the budget decoding-time compression cuts each layer back to); add --decode-budget N.")


def add_share_arguments(parser: argparse.ArgumentParser, ratios: bool = True) -> None:
    """``--share-prefill N`` / ``--no-share-prefill`` and (needle, demo) ``--ratios``."""
    from kvpress_lab.benchmarks.defaults import DEFAULT_SHARE

    share = parser.add_mutually_exclusive_group()
    share.add_argument("--share-prefill", type=values.int_at_least(1, "--share-prefill"), metavar="N",
                       help=f"compress up to N recipes of a sample from one shared prefill (default {DEFAULT_SHARE}; "
                            "their caches are held at once); 1 = one prefill per cell")
    share.add_argument("--no-share-prefill", action="store_true", help="one prefill per cell (same results, slower)")
    if ratios:
        parser.add_argument("--ratios", type=values.comma_list(values.ratio_item, "ratios in [0, 1)"),
                            help="compression ratios (fraction of the prompt's entries removed, kvpress's convention), "
                                 "as well as or instead of --budgets")


def add_sweep_arguments(parser: argparse.ArgumentParser, recipes: str, budgets: str, out: str, seed: bool = True) -> None:
    """``--recipes --budgets --window --out --no-progress`` and the model options of a sweep."""
    parser.add_argument("--recipes", type=values.comma_list(str, "preset names"), default=recipes.split(","),
                        help=f"presets to compare, 'full' = no compression (default {recipes})")
    parser.add_argument("--budgets", type=values.comma_list(values.positive_int, "positive integers"),
                        help=f"entries per layer (default {budgets})")
    parser.set_defaults(default_budgets=[int(b) for b in budgets.split(",")])
    parser.add_argument("--window", type=values.int_at_least(1, "--window"), help="override every preset's observation window")
    parser.add_argument("--out", help=f"result file (default {out})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_arguments(parser, seed=seed)


def resolve_budgets(args: argparse.Namespace) -> None:
    """``--budgets`` and ``--window`` do nothing when every recipe is ``full``: a usage error.

    Otherwise fill in the default budgets where ``--budgets`` was not given.
    """
    from kvpress_lab.benchmarks.input_errors import UsageError

    if all(name == "full" for name in args.recipes):
        given = [flag for flag, value in (("--budgets", args.budgets), ("--ratios", getattr(args, "ratios", None)),
                                          ("--window", getattr(args, "window", None))) if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'do' if len(given) > 1 else 'does'} nothing with --recipes "
                             f"{','.join(args.recipes)}: 'full' runs no compression; add a preset to --recipes "
                             f"(e.g. full,snapkv) or drop {' '.join(given)}.")
    if args.budgets is None:  # --ratios alone replaces the default budgets
        args.budgets = [] if getattr(args, "ratios", None) else list(args.default_budgets)
