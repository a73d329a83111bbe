"""Side check for the RULER leaderboard: do kvpress 0.5.5's own presses answer lm-eval's niah_single_1 as ours do?

Three steps, the first and last in the project's venv, the second in kvpress's side venv
(``bash scripts/kvpress_env.sh``)::

    .venv/bin/python scripts/niah_side_check.py dump --out niah.json            # lm-eval builds 6 prompts, 1024 tokens
    /path/to/kvpress-venv/bin/python scripts/niah_side_check.py kvpress niah.json
    .venv/bin/python scripts/niah_side_check.py ours niah.json snapkv snapkv-kvpress expected-attention-kvpress

``kvpress`` runs kvpress's presses directly (the press as a context manager around the prefill,
then greedy decoding with positions continuing after the uncompressed prompt, as kvpress's
pipeline does), query-aware (question inside the compressed prompt) and query-agnostic (question
after compression); ``ours`` runs our presets query-aware through ``Recipe.apply`` and
``model.generate``. Each prints, per method and compression ratio, how many needles were found and
the last answer, so equal answers can be compared line by line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

RATIOS = (0.25, 0.5)


def dump(out: str, limit: int, length: int) -> None:
    from kvpress_lab.benchmarks.lm_eval_tasks import load_samples
    from kvpress_lab.models.checkpoint import embedded_checkpoint_dir

    samples = load_samples(["niah_single_1"], str(embedded_checkpoint_dir()), [length], limit=limit)
    rows = []
    for sample in samples:
        context, question = sample.parts("query-agnostic")
        rows.append({"context": context, "question": question, "answers": list(sample.instance.doc["outputs"]),
                     "checkpoint": str(embedded_checkpoint_dir())})
    with open(out, "w") as handle:
        json.dump(rows, handle)
    print(f"Wrote {len(rows)} prompts to {out}")


def _greedy(model, tokenizer, cache, logits, position: int, steps: int = 12) -> str:
    import torch

    out = []
    for _ in range(steps):
        token = int(logits.argmax())
        out.append(token)
        if token == tokenizer.eos_token_id:
            break
        logits = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True,
                       position_ids=torch.tensor([[position]])).logits[0, -1]
        position += 1
    return tokenizer.decode(out)


def run_kvpress(path: str) -> None:
    import torch
    from kvpress import ExpectedAttentionPress, KnormPress, SnapKVPress
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    torch.set_num_threads(1)
    samples = json.load(open(path))
    tokenizer = AutoTokenizer.from_pretrained(samples[0]["checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(samples[0]["checkpoint"], dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    presses = {"none": None, "ExpectedAttentionPress": ExpectedAttentionPress, "SnapKVPress": SnapKVPress,
               "KnormPress": KnormPress}
    for name, press in presses.items():
        for ratio in RATIOS:
            for mode in ("query-aware", "query-agnostic"):
                found, answer = 0, ""
                for sample in samples:
                    context = tokenizer(sample["context"], return_tensors="pt", add_special_tokens=False).input_ids
                    question = tokenizer(sample["question"], return_tensors="pt", add_special_tokens=False).input_ids
                    first = torch.cat([context, question], 1) if mode == "query-aware" else context
                    cache = DynamicCache()
                    scope = contextlib.nullcontext() if press is None else press(compression_ratio=ratio)(model)
                    with torch.no_grad():
                        with scope:
                            logits = model(first, past_key_values=cache, use_cache=True).logits[0, -1]
                        end = context.shape[1] + question.shape[1]
                        if mode == "query-agnostic":
                            positions = torch.arange(context.shape[1], end)[None]
                            logits = model(question, past_key_values=cache, use_cache=True,
                                           position_ids=positions).logits[0, -1]
                        answer = _greedy(model, tokenizer, cache, logits, end)
                    found += sample["answers"][0] in answer
                print(f"kvpress {name:24s} ratio {ratio:<4} {mode:14s} {found}/{len(samples)}  last answer {answer!r}",
                      flush=True)


def run_ours(path: str, presets: list[str]) -> None:
    import torch

    from kvpress_lab import Recipe
    from kvpress_lab.models import load_model

    torch.set_num_threads(1)
    samples = json.load(open(path))
    model, tokenizer = load_model("smollm2-135m-instruct")
    for preset in presets:
        for ratio in RATIOS:
            found, answer = 0, ""
            for sample in samples:
                ids = tokenizer(sample["context"] + sample["question"], return_tensors="pt",
                                add_special_tokens=False).input_ids
                with Recipe.preset(preset, compression_ratio=ratio).apply(model):
                    out = model.generate(ids, max_new_tokens=12, do_sample=False)
                answer = tokenizer.decode(out[0, ids.shape[1]:])
                found += sample["answers"][0] in answer
            print(f"ours {preset:27s} ratio {ratio:<4} query-aware    {found}/{len(samples)}  last answer {answer!r}",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    first = steps.add_parser("dump", help="lm-eval builds the prompts (project venv)")
    first.add_argument("--out", required=True)
    first.add_argument("--limit", type=int, default=6)
    first.add_argument("--length", type=int, default=1024)
    steps.add_parser("kvpress", help="kvpress's presses (kvpress venv)").add_argument("prompts")
    ours = steps.add_parser("ours", help="our presets (project venv)")
    ours.add_argument("prompts")
    ours.add_argument("presets", nargs="+")
    args = parser.parse_args(argv)
    if args.step == "dump":
        dump(args.out, args.limit, args.length)
    elif args.step == "kvpress":
        run_kvpress(args.prompts)
    else:
        run_ours(args.prompts, args.presets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
