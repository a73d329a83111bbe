"""lm-eval's offline RULER tasks through kvpress_lab: the shared-prefill driver against lm-eval's own loop (CI smoke).

One offline task (``niah_single_1``) at 512 tokens, two documents (``--limit 2``), on the
embedded model: the driver builds lm-eval's very prompts, its answers (full cache and a
compressed recipe, one shared prefill) are those of lm-eval's own evaluation through the
``kvpress-lab`` model type, token for token, and lm-eval's metric scores them the same. Also:
which mode lm-eval's prompts put a compressed model in, the split of every offline task's prompt
at its question, and the requests the driver refuses.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest

pytest.importorskip("lm_eval", reason='pip install "kvpress-lab[eval]" to run the lm-eval tests')
pytest.importorskip("wonderwords", reason='pip install "kvpress-lab[eval]" (lm-eval[ruler]) to run the RULER tests')

from helpers.embedded import needs_distribution  # noqa: E402
from kvpress_lab import Recipe  # noqa: E402
from kvpress_lab.benchmarks.input_errors import BenchmarkInputError  # noqa: E402
from kvpress_lab.benchmarks.lm_eval_tasks import (  # noqa: E402
    MIN_SEQ_LENGTHS, OFFLINE_RULER_TASKS, load_samples, main_metric, score, split_at_question,
)
from kvpress_lab.integrations.lm_eval.offline import no_downloads  # noqa: E402

LENGTH = 512


@pytest.fixture(scope="module")
def checkpoint():
    from kvpress_lab.models.checkpoint import embedded_checkpoint_dir

    return str(embedded_checkpoint_dir())


@pytest.fixture(scope="module")
def lm(checkpoint):
    from kvpress_lab.integrations.lm_eval import KVPressLabLM

    return KVPressLabLM(pretrained="embedded", batch_size=1)


def _lm_eval_run(lm, checkpoint, recipe):
    """lm-eval's own evaluation of niah_single_1 (2 documents at LENGTH) through the kvpress-lab model type."""
    import lm_eval

    lm.recipe, lm.records = recipe, []
    results = lm_eval.simple_evaluate(model=lm, tasks=["niah_single_1"], limit=2, log_samples=True, bootstrap_iters=0,
                                      metadata={"max_seq_lengths": [LENGTH], "tokenizer": checkpoint})
    return sorted(results["samples"]["niah_single_1"], key=lambda s: s["doc_id"]), results["results"]["niah_single_1"]


@pytest.fixture(scope="module")
def compressed_run(lm, checkpoint):
    """lm-eval's own run with snapkv at ratio 0.5: its logged samples, metrics and the model type's prefill records."""
    recipe = Recipe.preset("snapkv", compression_ratio=0.5)
    logged, metrics = _lm_eval_run(lm, checkpoint, recipe)
    return recipe, logged, metrics, list(lm.records)


@needs_distribution
@pytest.mark.slow
def test_the_shared_prefill_driver_reproduces_lm_evals_own_loop(lm, checkpoint, compressed_run):
    from kvpress_lab.benchmarks.shared_generation import generate_answers

    recipe, logged, metrics, _ = compressed_run
    samples = load_samples(["niah_single_1"], checkpoint, [LENGTH], limit=2)
    assert [s.key for s in samples] == [f"niah_single_1|L={LENGTH}|i=0", f"niah_single_1|L={LENGTH}|i=1"]
    assert [s["arguments"][0][0] for s in logged] == [s.prompt for s in samples]  # lm-eval's very prompts
    ours: dict[int, list[str]] = {0: [], 1: []}
    for sample in samples:  # the full cache and the recipe from one shared prefill per prompt
        for i, result in generate_answers(lm.model, lm.tokenizer, [None, recipe], *sample.parts("query-aware"),
                                          max_new_tokens=sample.max_new_tokens):
            ours[i].append(result.text)
    assert [s["resps"][0][0] for s in logged] == ours[1]  # token for token
    scores = [main_metric(sample, score(sample, text))[1] for sample, text in zip(samples, ours[1])]
    assert [s[str(LENGTH)] for s in logged] == scores
    assert metrics[f"{LENGTH},none"] == pytest.approx(sum(scores) / len(scores))
    assert all(sample.instance.doc["outputs"][0] in text for sample, text in zip(samples, ours[0]))  # full cache: found


@needs_distribution
@pytest.mark.slow
def test_lm_evals_prompts_put_the_question_inside_the_compressed_prefill(lm, compressed_run):
    """lm-eval's RULER prompt ends with the question and the answer prefix, and all of it is prefilled under the recipe."""
    _, logged, _, records = compressed_run
    prompt = logged[0]["arguments"][0][0]
    assert prompt.rstrip().endswith("mentioned in the provided text is")
    assert "What is the special magic number for" in prompt.rsplit("\n", 1)[1]
    assert records[0].prompt_tokens[0] == len(lm.tokenizer(prompt, add_special_tokens=False).input_ids)
    assert records[0].evicted  # the question is compressed with the context: query-aware


@needs_distribution
@pytest.mark.slow
@pytest.mark.parametrize("task", OFFLINE_RULER_TASKS)
def test_every_offline_task_splits_at_its_question(checkpoint, task):
    """Context: the haystack with the answers; question: what names the key (or value) asked for, after it."""
    (sample,) = load_samples([task], checkpoint, [max(LENGTH, MIN_SEQ_LENGTHS.get(task, 0))], limit=1)
    context, question = sample.parts("query-agnostic")
    assert context + question == sample.prompt == "".join(sample.parts("query-aware"))
    answers = sample.instance.doc["outputs"]
    if task != "ruler_fwe":  # fwe's answers are the most frequent coded words: in the context, counted
        assert all(a in context for a in answers)
    assert all(a not in question for a in answers)
    assert question.lstrip().startswith(("What is", "Question:")), question[:40]
    assert "\n" not in question.split("Answer:")[0].strip(), question  # one line of question, then the answer prefix


def test_ruler_vt_below_its_generators_floor_is_refused_before_it_hangs():
    with pytest.raises(BenchmarkInputError, match="loops forever"):
        load_samples(["ruler_vt"], "unused", [512])


def test_split_at_question_refuses_what_it_cannot_split():
    assert split_at_question("ctx\nQ? A:", "ctx\nQ?") == ("ctx\n", "Q? A:")
    with pytest.raises(ValueError, match="no line break"):
        split_at_question("just one line", "just one line")
    with pytest.raises(ValueError, match="not in the prompt"):
        split_at_question("a\nb", "a\nc")


LOCAL_TASKS = pathlib.Path(__file__).parents[1] / "integrations" / "lm_eval_task"


@pytest.mark.parametrize(("task", "message"), [("kvpress_local_choice", "loglikelihood"), ("kvpress_sampled", "samples")])
def test_requests_the_driver_cannot_run_are_refused(tmp_path, task, message):
    """A multiple-choice (loglikelihood) task and a sampling task: a clear error pointing to lm-eval's own loop."""
    shutil.copytree(LOCAL_TASKS, tmp_path, dirs_exist_ok=True)
    (tmp_path / "kvpress_sampled.yaml").write_text(
        "include: kvpress_local_qa.yaml\ntask: kvpress_sampled\n"
        "generation_kwargs: {until: ['\\n'], max_gen_toks: 8, do_sample: true, temperature: 0.7}\n")
    with pytest.raises(BenchmarkInputError, match=message) as caught:
        load_samples([task], "unused", include_path=str(tmp_path))
    assert "kvpress_lab.integrations.lm_eval" in str(caught.value)


def test_unknown_tasks_are_refused_naming_the_offline_ones():
    with pytest.raises(BenchmarkInputError, match="niah_single_1"):
        load_samples(["ruler_no_such_task"], "unused")


def test_no_downloads_refuses_nltk_downloads_and_restores_them():
    import nltk

    original = nltk.download
    with no_downloads():
        assert nltk.download("punkt_tab") is False
    assert nltk.download is original
