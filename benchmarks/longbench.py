"""LongBench (v1) in its official layout: ``<data-dir>/<task>.jsonl``, prompts, limits and metrics.

Nothing is downloaded: point ``data_dir`` at a folder of the official JSONL files (the
``THUDM/LongBench`` ``data.zip``), one record per line with the fields ``input``, ``context``,
``answers``, ``length``, ``all_classes``, ``language`` and ``_id``. Prompt templates
(``dataset2prompt``), generation lengths (``dataset2maxlen``), middle truncation and scoring
follow the official ``pred.py`` / ``eval.py`` for the English tasks below.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks import metrics
from kvpress_lab.benchmarks.longbench_prompts import DATASET2MAXLEN, DATASET2PROMPT, NO_CHAT_TASKS

__all__ = [
    "TASKS",
    "DATASET2METRIC",
    "REQUIRED_FIELDS",
    "load_task",
    "build_prompt",
    "truncate_middle",
    "score_prediction",
    "score_task",
    "average_score",
]

#: The English LongBench tasks this module can prompt and score.
TASKS: tuple[str, ...] = tuple(DATASET2PROMPT)
REQUIRED_FIELDS = ("input", "context", "answers", "length", "all_classes", "language", "_id")

DATASET2METRIC: dict[str, Callable[..., float]] = {
    "narrativeqa": metrics.qa_f1_score,
    "qasper": metrics.qa_f1_score,
    "multifieldqa_en": metrics.qa_f1_score,
    "hotpotqa": metrics.qa_f1_score,
    "2wikimqa": metrics.qa_f1_score,
    "musique": metrics.qa_f1_score,
    "gov_report": metrics.rouge_score,
    "qmsum": metrics.rouge_score,
    "multi_news": metrics.rouge_score,
    "trec": metrics.classification_score,
    "triviaqa": metrics.qa_f1_score,
    "samsum": metrics.rouge_score,
    "passage_count": metrics.count_score,
    "passage_retrieval_en": metrics.retrieval_score,
    "lcc": metrics.code_sim_score,
    "repobench-p": metrics.code_sim_score,
}
#: Few-shot tasks whose prediction is cut to its first line before scoring (official eval.py).
_FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum"})


def _check_task(task: str) -> str:
    if task not in DATASET2PROMPT:
        raise ValueError(f"Unknown LongBench task {task!r}; expected one of: {', '.join(TASKS)}.")
    return task


def load_task(data_dir: str | pathlib.Path, task: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Read ``<data_dir>/<task>.jsonl`` and check every record has the official fields.

    Parameters
    ----------
    data_dir : str or pathlib.Path
        Folder holding the official JSONL files.
    task : str
        One of :data:`TASKS`.
    limit : int or None
        Keep only the first ``limit`` records.
    """
    path = pathlib.Path(data_dir) / f"{_check_task(task)}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"LongBench task file {path} not found; --data-dir must hold the official <task>.jsonl files "
            "(THUDM/LongBench data.zip, unpacked)."
        )
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [f for f in REQUIRED_FIELDS if f not in record]
            if missing:
                raise ValueError(f"{path}:{number}: record lacks field(s) {missing}; expected {list(REQUIRED_FIELDS)}.")
            if not isinstance(record["answers"], list):
                raise TypeError(f"{path}:{number}: 'answers' must be a list, got {type(record['answers']).__name__}.")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records


def build_prompt(task: str, record: Mapping[str, Any]) -> str:
    """The official prompt of ``task`` filled with the record's ``context`` and ``input``."""
    return DATASET2PROMPT[_check_task(task)].format(context=record["context"], input=record["input"])


def truncate_middle(prompt: str, tokenizer: Any, max_length: int) -> str:
    """Keep the first and last ``max_length // 2`` tokens of an over-long prompt (official pred.py).

    Parameters
    ----------
    prompt : str
        The built prompt.
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer.
    max_length : int
        Largest prompt, in tokens, the model is given.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 tokens, got {max_length}.")
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= max_length:
        return prompt
    half = int(max_length / 2)
    return tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(ids[-half:], skip_special_tokens=True)


def uses_chat_template(task: str) -> bool:
    """Whether the official script wraps the task's prompt in the chat format (not for few-shot/code)."""
    return _check_task(task) not in NO_CHAT_TASKS


def score_prediction(task: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None) -> float:
    """Best score, in ``[0, 1]``, of ``prediction`` over the reference ``answers``."""
    metric = DATASET2METRIC[_check_task(task)]
    if task in _FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    return max((metric(prediction, answer, all_classes=all_classes) for answer in answers), default=0.0)


def score_task(task: str, predictions: Sequence[str], records: Sequence[Mapping[str, Any]]) -> float:
    """Official task score: ``round(100 x mean best score, 2)``."""
    if len(predictions) != len(records) or not records:
        raise ValueError(f"Expected one prediction per record (>= 1), got {len(predictions)} for {len(records)} records.")
    total = sum(score_prediction(task, p, r["answers"], r.get("all_classes")) for p, r in zip(predictions, records))
    return round(100 * total / len(records), 2)


def average_score(per_task: Mapping[str, float] | Iterable[float]) -> float:
    """Unweighted mean over tasks, rounded to 2 decimals (how the papers report LongBench)."""
    values = list(per_task.values() if isinstance(per_task, Mapping) else per_task)
    if not values:
        raise ValueError("average_score needs at least one task score.")
    return round(sum(values) / len(values), 2)
