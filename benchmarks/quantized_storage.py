"""Quantized storage on the embedded model: KV bytes held and logit error after 32 decoding steps.

For one seeded prompt of ``--length`` tokens and a recipe at ``--budget`` entries per layer, each
setting (float storage in float32 and bfloat16, then int8 and int4 storage of the same kept entries)
prefills, then decodes 32 tokens *teacher-forced* to the float32 run's tokens, so every setting sees
the same inputs. Reported: KV bytes held after prefill and after decoding (``cache_report``), their
ratio to the float32 compressed cache, and the largest absolute logit difference from float32 at
step 1 and step 32 (relative to the float32 logits' largest magnitude).

Run: ``python -m kvpress_lab.benchmarks.quantized_storage --length 2048 --budget 128``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

__all__ = ["measure", "main"]


class _ForceTokens(LogitsProcessor):
    """Step ``i`` emits ``tokens[:, i]``; ``output_logits`` still returns the model's raw logits."""

    def __init__(self, tokens: torch.Tensor, prompt_length: int):
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        return torch.full_like(scores, -float("inf")).scatter(1, self.tokens[:, step : step + 1], 0.0)


def _run(model, recipe, ids, steps, tokens=None):
    from kvpress_lab import cache_report

    processors = LogitsProcessorList([_ForceTokens(tokens, ids.shape[1])] if tokens is not None else [])
    prefill_bytes = cache_report(recipe.prefill(model, ids)).total_bytes
    with recipe.apply(model), torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, logits_processor=processors,
                             output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(out.logits, dim=1).float()  # (1, steps, V)
    return logits, out.sequences[:, ids.shape[1]:], prefill_bytes, cache_report(out.cache).total_bytes


def measure(length: int, budget: int, recipe_name: str = "snapkv", steps: int = 32) -> list[dict]:
    """One row per storage setting (see the module docstring)."""
    from kvpress_lab import Recipe
    from kvpress_lab.benchmarks.speed import speed_prompt
    from kvpress_lab.models import load_model

    model, tokenizer = load_model()
    text, _ = speed_prompt(tokenizer, length)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :length]
    base = Recipe.preset(recipe_name, budget=budget)
    reference, tokens, ref_prefill, ref_final = _run(model, base, ids, steps)
    scale = float(reference.abs().max())
    rows = [dict(storage="float32", prefill_bytes=ref_prefill, final_bytes=ref_final, ratio=1.0, step1=0.0, step32=0.0)]
    settings = [("bfloat16", base, torch.bfloat16), ("int8", Recipe.preset(recipe_name, budget=budget, executor_kwargs={"kv_bits": 8}), None),
                ("int4", Recipe.preset(recipe_name, budget=budget, executor_kwargs={"kv_bits": 4}), None)]
    for label, recipe, dtype in settings:
        model_here = model.to(dtype) if dtype is not None else model
        logits, _, prefill_bytes, final_bytes = _run(model_here, recipe, ids, steps, tokens)
        if dtype is not None:
            model.to(torch.float32)
        error = (logits - reference).abs().amax(dim=-1)[0]  # (steps,)
        rows.append(dict(storage=label, prefill_bytes=prefill_bytes, final_bytes=final_bytes, ratio=prefill_bytes / ref_prefill,
                         step1=float(error[0]) / scale, step32=float(error[-1]) / scale))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--length", type=int, default=2048, help="prompt tokens")
    parser.add_argument("--budget", type=int, default=128, help="entries per layer")
    parser.add_argument("--recipe", default="snapkv", help="preset name")
    args = parser.parse_args(argv)
    rows = measure(args.length, args.budget, args.recipe)
    print(f"{args.recipe}@{args.budget}, T={args.length}, 32 teacher-forced decoding steps (embedded SmolLM2-135M, CPU)")
    print(f"{'storage':<9} {'KV after prefill':>17} {'vs float32':>10} {'KV after decode':>16} {'|dlogit| step 1':>16} {'step 32':>9}")
    for row in rows:
        print(f"{row['storage']:<9} {row['prefill_bytes'] / 2**20:>13.2f} MiB {row['ratio']:>9.1%} {row['final_bytes'] / 2**20:>12.2f} MiB "
              f"{row['step1']:>15.2e} {row['step32']:>9.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
