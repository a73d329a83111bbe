"""Many threads on one model (and on copies of it): every call returns what it returns alone.

Servers call :func:`~kvpress_lab.ask` and the pipeline from several threads, and research code mixes
``with recipe.apply(model)`` blocks with plain ``generate`` calls. Each worker below runs a shuffled
mix of those calls with staggered starts; every result must equal the same call made sequentially,
and no call may raise. The hooks are registered and removed while other threads' forwards run, so
this also stresses hook registration (torch makes a hook visible one statement before it is marked
as taking keyword arguments).
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
import threading
import time

import pytest
import torch
from helpers.char_tokenizer import CharTokenizer
from helpers.clean_model import assert_clean
from helpers.tiny_models import random_prompt, tiny_model
from transformers import pipeline

import kvpress_lab.pipeline  # noqa: F401 - registers the "kvpress-lab" task
from kvpress_lab import Recipe, ask

CONTEXTS = ["the quick brown fox jumps over the lazy dog " * 3, "a stitch in time saves nine, they said " * 2]
QUESTIONS = ["what?", "who is it?"]
RECIPES = {"full": None, "snapkv": Recipe.preset("snapkv", budget=24, window=4), "h2o": Recipe.preset("h2o", budget=20, window=4),
           "decode": Recipe(budget=24, window=4, decode_budget=12, compress_every=4)}
PROMPTS = [random_prompt(1, 40, seed=s) for s in range(2)]
OPTIONS = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
THREADS = 8
ROUNDS = 3  # each worker runs every task ROUNDS times: THREADS * ROUNDS * len(TASKS) calls in all


def tasks() -> list[tuple]:
    out = []
    for recipe in RECIPES:
        for c in range(len(CONTEXTS)):
            out.append(("ask", recipe, c, QUESTIONS[c]))
            out.append(("pipeline", recipe, c, QUESTIONS[1 - c]))
        for p in range(len(PROMPTS)):
            out.append(("apply", recipe, p))
    return out


def run(task: tuple, model, tokenizer, pipe) -> object:
    kind, recipe = task[0], RECIPES[task[1]]
    if kind == "ask":
        return ask(model, tokenizer, CONTEXTS[task[2]], task[3], recipe, max_new_tokens=4)[0].text
    if kind == "pipeline":
        return pipe(context=CONTEXTS[task[2]], question=task[3], recipe=recipe)["answer"]
    if recipe is None:
        return model.generate(PROMPTS[task[2]], **OPTIONS).tolist()
    with recipe.apply(model):
        return model.generate(PROMPTS[task[2]], **OPTIONS).tolist()


def hammer(models: list, expected: dict) -> tuple[list, list]:
    """Run ``THREADS`` workers, worker ``i`` on ``models[i % len(models)]``; return (mismatches, errors)."""
    tokenizer = CharTokenizer()
    pipes = [pipeline("kvpress-lab", model=m, tokenizer=tokenizer, max_new_tokens=4) for m in models]
    mismatches, errors, start = [], [], threading.Barrier(THREADS)

    def worker(i: int) -> None:
        rng = random.Random(i)
        work = tasks() * ROUNDS
        rng.shuffle(work)
        start.wait()
        time.sleep(0.002 * i)  # staggered starts: registrations land while other threads are mid-forward
        for task in work:
            try:
                got = run(task, models[i % len(models)], tokenizer, pipes[i % len(pipes)])
            except Exception as error:  # noqa: BLE001 - every crash is collected and reported
                errors.append((task, f"{type(error).__name__}: {error}"))
                continue
            if got != expected[task]:
                mismatches.append((task, got, expected[task]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return mismatches, errors


@pytest.fixture(scope="module")
def reference():
    model = tiny_model("llama", layers=2)
    tokenizer = CharTokenizer()
    pipe = pipeline("kvpress-lab", model=model, tokenizer=tokenizer, max_new_tokens=4)
    return model, {task: run(task, model, tokenizer, pipe) for task in tasks()}


def _summary(mismatches, errors) -> str:
    kinds = sorted({message.split(":")[0] + ": " + message.split(":")[1][:90] for _, message in errors})
    return f"{len(errors)} crashes ({kinds[:4]}), {len(mismatches)} wrong results (first: {mismatches[:1]})"


def test_many_threads_on_one_model_get_the_sequential_results(reference):
    model, expected = reference
    torch.set_num_threads(1)
    mismatches, errors = hammer([model], expected)
    calls = THREADS * ROUNDS * len(expected)
    assert calls >= 300
    assert not errors and not mismatches, f"of {calls} calls: {_summary(mismatches, errors)}"
    assert_clean(model)


def test_threads_on_copies_of_the_model_get_the_sequential_results(reference):
    model, expected = reference
    torch.set_num_threads(1)
    copies = [copy.deepcopy(model) for _ in range(THREADS // 2)]
    mismatches, errors = hammer([model, *copies], expected)
    assert not errors and not mismatches, _summary(mismatches, errors)
    for each in (model, *copies):
        assert_clean(each)


class _SlowHookDict(OrderedDict):
    """A hook dict whose insertions pause right after the hook becomes visible: another thread's forward
    then runs inside torch's two-statement registration (the pause stands for a thread switch there)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        time.sleep(0.0005)


def test_registering_hooks_never_breaks_another_threads_forward():
    """torch makes a keyword-argument hook visible one statement before flagging it as one: a forward in
    another thread in between calls it without ``kwargs``. Sessions attach and detach in one thread
    while others run plain forwards; no forward may fail, and each must equal the plain forward."""
    model = tiny_model("llama", layers=2)
    for module in model.modules():
        module._forward_pre_hooks = _SlowHookDict()
        module._forward_hooks = _SlowHookDict()
    prompt = random_prompt(1, 12)
    with torch.no_grad():
        want = model(prompt).logits
    stop, failures, checked = threading.Event(), [], [0]

    def plain_forwards() -> None:
        while not stop.is_set():
            try:
                with torch.no_grad():
                    got = model(prompt).logits
            except Exception as error:  # noqa: BLE001 - collected
                failures.append(f"{type(error).__name__}: {error}")
                continue
            checked[0] += 1
            if not torch.equal(got, want):
                failures.append("a plain forward in another thread gave other logits")

    threads = [threading.Thread(target=plain_forwards) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        recipe = Recipe(budget=8, window=2)
        for _ in range(30):
            with recipe.apply(model):
                pass
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert checked[0] > 0
    assert not failures, f"{len(failures)} of {checked[0] + len(failures)} forwards failed, e.g. {failures[:2]}"
    assert_clean(model)
