"""Compress once, ask many: one compressed prefill for N questions vs N separate compressed prefills.

On one synthetic context of about ``--length`` tokens and ``--questions`` questions, both ways
run through :func:`kvpress_lab.answers.ask` with the same recipe and generation options:

* **shared**: ``ask(model, tokenizer, context, questions, recipe)`` — one prefill, one copy of
  the compressed cache per question;
* **separate**: ``ask(model, tokenizer, context, [question], recipe)`` once per question — a
  compressed prefill for each.

The two are interleaved ``--repeats`` times (shared, separate, shared, ...) after one warm-up of
each (``--no-warmup``: none); medians of the wall time of all questions, and of the prefill time, are printed, with the
ratio separate / shared. The answers of both must be equal (each question decodes on its own
copy of the same compressed cache either way); a difference is reported.

Run: ``python -m kvpress_lab.benchmarks.ask_many --length 1500 --questions 5 --repeats 3``
"""

from __future__ import annotations

import argparse
import statistics
import time

__all__ = ["QUESTIONS", "measure", "main"]

#: Questions asked about the synthetic context (the first ``--questions`` are used).
QUESTIONS = (
    "What is this text about?",
    "Which numbers appear in it?",
    "Name one person mentioned.",
    "What happens at the end?",
    "Summarise it in one sentence.",
    "Which place is mentioned first?",
    "What is the last question about?",
    "Is there a table in it?",
)


def measure(model, tokenizer, context: str, questions, recipe, *, repeats: int = 3, max_new_tokens: int = 16,
            warmup: bool = True) -> dict:
    """Interleaved shared vs separate runs; returns the medians, the per-run times and whether answers agree."""
    from kvpress_lab.answers import ask

    options = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens}

    def shared():
        start = time.perf_counter()
        answers = ask(model, tokenizer, context, questions, recipe, **options)
        return time.perf_counter() - start, answers[0].prefill_seconds, [a.text for a in answers], answers[0].context_tokens

    def separate():
        start, prefill, texts = time.perf_counter(), 0.0, []
        for question in questions:
            (answer,) = ask(model, tokenizer, context, [question], recipe, **options)
            prefill += answer.prefill_seconds
            texts.append(answer.text)
        return time.perf_counter() - start, prefill, texts, None

    if warmup:
        shared(), separate()
    runs: dict[str, list] = {"shared": [], "separate": []}
    for _ in range(repeats):
        runs["shared"].append(shared())
        runs["separate"].append(separate())
    out = {"context_tokens": runs["shared"][0][3], "questions": len(questions), "repeats": repeats,
           "max_new_tokens": max_new_tokens,
           "answers_equal": all(s[2] == p[2] for s, p in zip(runs["shared"], runs["separate"]))}
    for name, rows in runs.items():
        out[f"{name}_s"] = statistics.median(r[0] for r in rows)
        out[f"{name}_prefill_s"] = statistics.median(r[1] for r in rows)
        out[f"{name}_runs_s"] = [r[0] for r in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the medians of both ways on the embedded model (or ``--model``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1500, help="context words of synthetic text (default 1500)")
    parser.add_argument("--questions", type=int, default=5, help=f"questions, at most {len(QUESTIONS)} (default 5)")
    parser.add_argument("--preset", default="snapkv", help="compression preset (default snapkv)")
    parser.add_argument("--budget", type=int, default=128, help="entries per layer (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each way (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per answer, exactly (default 16)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model (default: the embedded one)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up run of each way")
    args = parser.parse_args(argv)
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions must be in [1, {len(QUESTIONS)}], got {args.questions}")

    from kvpress_lab import Recipe
    from kvpress_lab.analysis.synthetic import synthetic_text
    from kvpress_lab.models import load_model

    model, tokenizer = load_model(args.model)
    context = synthetic_text(args.length, seed=0)
    ids = tokenizer(context).input_ids
    if len(ids) > args.length:  # about one token per word or more: cut the text to --length tokens
        context = tokenizer.decode(ids[: args.length], skip_special_tokens=True)
    recipe = Recipe.preset(args.preset, budget=args.budget)
    result = measure(model, tokenizer, context, list(QUESTIONS[: args.questions]), recipe, repeats=args.repeats,
                     max_new_tokens=args.max_new_tokens, warmup=not args.no_warmup)
    print(f"{args.model}, {args.preset} budget {args.budget}, context {result['context_tokens']} tokens (chat template), "
          f"{result['questions']} questions x {args.max_new_tokens} tokens, {args.repeats} interleaved repeats (medians)")
    for name in ("shared", "separate"):
        print(f"{name:>9}: {result[f'{name}_s']:.2f} s in all, of which prefill {result[f'{name}_prefill_s']:.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in result[f'{name}_runs_s'])})")
    print(f"separate / shared: {result['separate_s'] / result['shared_s']:.2f}x in all, "
          f"{result['separate_prefill_s'] / result['shared_prefill_s']:.2f}x prefill; answers equal: {result['answers_equal']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
