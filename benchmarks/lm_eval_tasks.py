"""lm-eval's own tasks as kvpress_lab samples: lm-eval builds the prompts and scores the answers.

lm-eval's evaluation loop prefills every request once per model, i.e. once per recipe. Here
lm-eval builds the task (its documents, its prompt text with the generation prefix, its
generation arguments), kvpress_lab generates the answers of *every* recipe of a prompt from
one shared prefill (:class:`~kvpress_lab.benchmarks.sample_groups.SampleGroups`), and lm-eval
scores them: its filters, then the task's own ``process_results``.

The RULER tasks of lm-eval 0.4 that build their data offline (:data:`OFFLINE_RULER_TASKS`)
need only a tokenizer; the others download data (:data:`EXCLUDED_RULER_TASKS` says what).
``lm_eval.tasks.ruler.prepare_niah`` tries ``nltk.download("punkt_tab")`` when it is imported;
:func:`no_downloads` turns that attempt into a logged refusal (the offline haystacks never
split sentences: only the essay haystack needs punkt).

Which part is compressed (``mode``):

- ``"query-aware"``: lm-eval's prompt as it is, which for RULER ends with the question and the
  answer prefix: the question is compressed with the context (as lm-eval's ``hf`` model type
  with a recipe does, and as in the SnapKV and PyramidKV papers).
- ``"query-agnostic"``: the prompt split at its question (:func:`split_at_question`): the context
  is compressed first, then the question is appended and decoded (kvpress's pipeline,
  :func:`kvpress_lab.ask`).

Examples
--------
>>> split_at_question("Memorize it.\\nA B C\\nWhat is B? Answer:", "Memorize it.\\nA B C\\nWhat is B?")
('Memorize it.\\nA B C\\n', 'What is B? Answer:')
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvpress_lab.benchmarks.input_errors import BenchmarkInputError
from kvpress_lab.integrations.lm_eval.offline import no_downloads

__all__ = ["OFFLINE_RULER_TASKS", "EXCLUDED_RULER_TASKS", "LmEvalSample", "MIN_SEQ_LENGTHS", "load_samples",
           "split_at_question", "question_start", "score", "main_metric", "prompt_digest"]

logger = logging.getLogger(__name__)

#: lm-eval RULER tasks whose data is generated locally from a tokenizer (no download).
OFFLINE_RULER_TASKS: tuple[str, ...] = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt",
                                        "ruler_cwe", "ruler_fwe")

#: The other RULER tasks of lm-eval 0.4 and what each downloads.
EXCLUDED_RULER_TASKS: dict[str, str] = {
    **{name: "its haystack is Paul Graham's essays (the Hugging Face dataset baber/paul_graham_essays) and it splits "
             "them with nltk's punkt_tab tokenizer data, both downloaded"
       for name in ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multiquery", "niah_multivalue")},
    "ruler_qa_squad": "its documents are SQuAD v2 (downloaded)",
    "ruler_qa_hotpot": "its documents are HotpotQA (downloaded)",
}

#: Shortest ``max_seq_lengths`` a task's generator gets through: below it lm-eval 0.4.13's generator loops
#: forever (``ruler_vt`` at 512 tokens retries a sample that cannot fit, without end; 1024 works).
MIN_SEQ_LENGTHS: dict[str, int] = {"ruler_vt": 1024}

#: The seeds lm-eval's ``simple_evaluate`` sets before it builds tasks (its defaults): random, numpy, torch.
LM_EVAL_SEEDS = (0, 1234, 1234)


@dataclass(frozen=True)
class LmEvalSample:
    """One lm-eval request, ready for kvpress_lab's generation.

    Attributes
    ----------
    task : str
        lm-eval task name.
    length : int or None
        RULER's ``max_length`` of the document (the ``max_seq_lengths`` entry it was built for).
    index : int
        The document's position among the documents of its task and length.
    prompt : str
        lm-eval's context string: the document's text, delimiter and generation prefix.
    question_start : int
        Where the question begins in ``prompt`` (:func:`split_at_question`).
    max_new_tokens : int
        lm-eval's ``max_gen_toks``.
    until : tuple of str
        lm-eval's stop strings (the answer is cut at the first one, as lm-eval's ``hf`` model cuts it).
    instance : Any
        The ``lm_eval.api.instance.Instance`` (its ``doc`` scores the answer).
    task_object : Any
        The lm-eval task (its filters and ``process_results``).
    """

    task: str
    length: int | None
    index: int
    prompt: str
    question_start: int
    max_new_tokens: int
    until: tuple[str, ...]
    instance: Any
    task_object: Any

    @property
    def key(self) -> str:
        """``task|L=length|i=index``."""
        return f"{self.task}|L={self.length if self.length is not None else '-'}|i={self.index}"

    def parts(self, mode: str) -> tuple[str, str]:
        """``(compressed part, appended part)`` of the prompt in ``mode``."""
        if mode == "query-aware":
            return self.prompt, ""
        if mode == "query-agnostic":
            return self.prompt[: self.question_start], self.prompt[self.question_start :]
        raise ValueError(f"mode must be 'query-aware' or 'query-agnostic', got {mode!r}.")


def _seed() -> None:
    import numpy as np
    import torch

    random.seed(LM_EVAL_SEEDS[0])
    np.random.seed(LM_EVAL_SEEDS[1])
    torch.manual_seed(LM_EVAL_SEEDS[2])


def load_samples(tasks: Sequence[str], tokenizer_name: str, max_seq_lengths: Sequence[int] | None = None,
                 limit: int | None = None, include_path: str | None = None) -> list[LmEvalSample]:
    """Build lm-eval's requests of ``tasks`` and return them as samples.

    Each task is built on its own, after the seeds lm-eval's ``simple_evaluate`` sets, so its
    documents are those of ``lm_eval --tasks <task> --metadata '{"max_seq_lengths": [...]}'`` and
    do not depend on the other tasks listed.

    Parameters
    ----------
    tasks : sequence of str
        lm-eval task names (``generate_until`` tasks, greedy).
    tokenizer_name : str
        What RULER's tasks size their prompts with (a checkpoint folder or hub id).
    max_seq_lengths : sequence of int or None
        RULER's lengths (``--metadata max_seq_lengths``); ``None``: lm-eval's default (4096).
    limit : int or None
        The first ``limit`` documents of each task *and length* (lm-eval's ``--limit`` takes the
        first documents of the task, i.e. of its first length only).
    include_path : str or None
        A folder of task YAML files of your own (lm-eval's ``--include_path``).

    Raises
    ------
    BenchmarkInputError
        An unknown task, a task that is not ``generate_until``, or one that samples.
    """
    from lm_eval.tasks import TaskManager

    metadata: dict[str, Any] = {"tokenizer": tokenizer_name, "pretrained": tokenizer_name}
    if max_seq_lengths is not None:
        metadata["max_seq_lengths"] = list(max_seq_lengths)
    for name in tasks:
        short = [n for n in (max_seq_lengths or [4096]) if n < MIN_SEQ_LENGTHS.get(name, 0)]
        if short:
            raise BenchmarkInputError(f"lm-eval's {name} cannot build prompts of {short[0]} tokens (its generator loops "
                                      f"forever below about {MIN_SEQ_LENGTHS[name]}); use max_seq_lengths >= "
                                      f"{MIN_SEQ_LENGTHS[name]}.")
    samples: list[LmEvalSample] = []
    with no_downloads():
        manager = TaskManager(include_path=include_path, metadata=metadata)
        unknown = [name for name in tasks if name not in manager.all_tasks]
        if unknown:
            raise BenchmarkInputError(f"lm-eval has no task {unknown}; see `lm_eval ls tasks` (RULER's offline tasks: "
                                      f"{', '.join(OFFLINE_RULER_TASKS)}).")
        for name in dict.fromkeys(tasks):
            _seed()
            task = manager.load([name])["tasks"][name]
            samples += _task_samples(name, task, limit)
    return samples


def _task_samples(name: str, task: Any, limit: int | None) -> list[LmEvalSample]:
    output_type = getattr(task, "OUTPUT_TYPE", None)
    if output_type != "generate_until":
        raise BenchmarkInputError(
            f"lm-eval task {name} asks for {output_type} requests; the shared-prefill evaluation runs generate_until "
            "tasks. Run it through lm-eval's own loop with the kvpress-lab model type (python -m "
            "kvpress_lab.integrations.lm_eval --model kvpress-lab ..., see the lm-eval how-to), which compresses "
            "loglikelihood requests one prefill each.")
    task.build_all_requests(limit=None, rank=0, world_size=1)
    seen: dict[Any, int] = {}
    out = []
    for instance in task.instances:
        context, kwargs = instance.arguments
        length = instance.doc.get("max_length") if isinstance(instance.doc, Mapping) else None
        index = seen.get(length, 0)
        seen[length] = index + 1
        if limit is not None and index >= limit:
            continue
        kwargs = dict(kwargs)
        if kwargs.get("do_sample"):
            raise BenchmarkInputError(f"lm-eval task {name} samples (do_sample=True); kvpress_lab's evaluation decodes "
                                      "greedily. Run it through lm-eval's own loop with the kvpress-lab model type (python -m "
                                      "kvpress_lab.integrations.lm_eval --model kvpress-lab ...).")
        until = kwargs.get("until") or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_new = int(kwargs.get("max_gen_toks", 256))  # lm-eval's hf model's default
        text = task.doc_to_text(instance.doc)
        out.append(LmEvalSample(name, length, index, context, question_start(context, text), max_new, until, instance,
                                task))
    return out


def split_at_question(prompt: str, text: str) -> tuple[str, str]:
    """``(context, question)`` of lm-eval's ``prompt``: the question is the last line of the document's ``text``.

    ``prompt`` is the document's text followed by the delimiter and generation prefix (and
    wrapped in a chat template, if any); its question starts where the last line of ``text``
    does. RULER's prompts all end with one line of question after the context.

    Raises
    ------
    ValueError
        ``text`` has no line break (nothing would be left to compress before the question), or its
        last line is not in ``prompt``.
    """
    start = question_start(prompt, text)
    return prompt[:start], prompt[start:]


def question_start(prompt: str, text: str) -> int:
    """Index in ``prompt`` where the last line of ``text`` (the question) begins; see :func:`split_at_question`."""
    cut = text.rstrip("\n").rfind("\n")
    if cut < 0:
        raise ValueError(f"the document's text has no line break, so its question cannot be told from its context: "
                         f"{text[:80]!r}...")
    question = text[cut + 1 :].rstrip("\n")
    start = prompt.rfind(question)
    if not question.strip() or start < 0:
        raise ValueError(f"the document's last line {question[:80]!r} is not in the prompt, so the prompt cannot be "
                         "split at its question.")
    return start


def score(sample: LmEvalSample, answer: str) -> dict[str, float]:
    """lm-eval's metrics of ``answer``: ``until`` cut, the task's filters, then its ``process_results``.

    RULER's metrics are keyed by length (``{"1024": 1.0, "4096": -1.0}``, -1 meaning "another
    length"); they come back as they are.
    """
    for stop in sample.until:
        if stop:
            answer = answer.split(stop)[0]
    instance = copy.copy(sample.instance)
    instance.resps = [answer]
    instance.filtered_resps = {}
    metrics: dict[str, float] = {}
    for ensemble in sample.task_object._filters:
        ensemble.apply([instance])
        filtered = instance.filtered_resps[ensemble.name]
        metrics.update(sample.task_object.process_results(instance.doc, [filtered]))
    return metrics


def main_metric(sample: LmEvalSample, metrics: Mapping[str, float]) -> tuple[str, float]:
    """``(name, value)`` of the metric a table shows: RULER's metric of the sample's length, else the task's first."""
    if sample.length is not None and str(sample.length) in metrics:
        return str(sample.length), float(metrics[str(sample.length)])
    name = next(iter(metrics))
    return name, float(metrics[name])


def prompt_digest(text: str) -> str:
    """A short digest of a prompt (a resumed run checks its documents are the ones already in the file)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
