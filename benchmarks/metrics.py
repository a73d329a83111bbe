"""LongBench's official metrics, reimplemented without third-party packages.

Each function takes ``(prediction, ground_truth, **kwargs)`` and returns a float in ``[0, 1]``,
as in ``THUDM/LongBench`` ``metrics.py``; :mod:`kvpress_lab.benchmarks.longbench` takes the
maximum over the reference answers and reports ``100 x`` the mean.

Two metrics replace a package of the official script with an exact reimplementation:

- :func:`rouge_score` reproduces ``rouge`` (pltrdy, 1.0.1) ``Rouge().get_scores(avg=True)
  ["rouge-l"]["f"]``: sentences split on ``"."``, words on ``" "``, summary-level union-LCS with
  ``exclusive=True`` (unique words), ``F = 2PR / (P + R + 1e-8)``, and ``0.0`` for an empty
  prediction (the official script catches the package's error and scores 0).
- :func:`code_sim_score` reproduces ``fuzzywuzzy`` ``fuzz.ratio`` without ``python-Levenshtein``:
  ``round(100 * difflib.SequenceMatcher(None, a, b).ratio())``, ``0`` when either string is empty.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "normalize_answer",
    "qa_f1_score",
    "rouge_score",
    "rouge_l_f",
    "classification_score",
    "retrieval_score",
    "count_score",
    "code_sim_score",
    "fuzz_ratio",
]


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD-style).

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs: object) -> float:
    """Bag-of-words F1 between the normalised prediction and answer.

    >>> round(qa_f1_score("the cat sat", "a cat sat down"), 4)
    0.8
    """
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _lcs_words(reference: list[str], candidate: list[str]) -> list[str]:
    """Words of one longest common subsequence, chosen exactly like ``rouge``'s ``_recon_lcs``."""
    n, m = len(reference), len(candidate)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if reference[i - 1] == candidate[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    words: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:  # iterative form of the package's recursion (same tie-breaking)
        if reference[i - 1] == candidate[j - 1]:
            words.append(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words[::-1]


def _sentences(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.split(".") if len(part) > 0]


def rouge_l_f(prediction: str, ground_truth: str) -> float:
    """Summary-level ROUGE-L F of ``rouge`` 1.0.1 (see the module docstring); ``0.0`` when empty.

    >>> round(rouge_l_f("the cat sat on the mat", "the cat lay on the mat"), 6)  # P = R = 4/5 unique words
    0.8
    """
    hyp, ref = _sentences(prediction), _sentences(ground_truth)
    if not hyp or not ref:
        return 0.0
    hyp_words = [s.split(" ") for s in hyp]
    m = len({w for s in ref for w in s.split(" ")})  # unique reference words (exclusive=True)
    n = len({w for s in hyp_words for w in s})  # unique candidate words
    union: set[str] = set()
    overlap = 0
    for ref_sentence in ref:
        before = len(union)
        for words in hyp_words:
            union |= set(_lcs_words(ref_sentence.split(" "), words))
        overlap += len(union) - before
    recall, precision = overlap / m, overlap / n
    return 2.0 * (precision * recall / (precision + recall + 1e-8))


def rouge_score(prediction: str, ground_truth: str, **kwargs: object) -> float:
    """LongBench's ``rouge_score``: :func:`rouge_l_f`."""
    return rouge_l_f(prediction, ground_truth)


def classification_score(prediction: str, ground_truth: str, **kwargs: object) -> float:
    """1/k when the answer is among the k class names found in the prediction, else 0.

    Class names contained in the answer (but different from it) are dropped first, with the
    official script's in-place removal while iterating, kept as is for score parity.

    >>> classification_score("It is a Location question", "Location", all_classes=["Location", "Person"])
    1.0
    """
    all_classes = kwargs.get("all_classes")
    if not isinstance(all_classes, (list, tuple)):
        raise TypeError(f"classification_score needs all_classes=list of class names, got {all_classes!r}.")
    matches = [name for name in all_classes if name in prediction]
    for term in matches:  # noqa: B007 - mutating while iterating, exactly like the official script
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _share_of_numbers(prediction: str, expected: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(number == str(expected) for number in numbers) / len(numbers)


def retrieval_score(prediction: str, ground_truth: str, **kwargs: object) -> float:
    """Share of the numbers in the prediction equal to the answer's ``Paragraph N``.

    >>> retrieval_score("Paragraph 3, not 4", "Paragraph 3")
    0.5
    """
    found = re.findall(r"Paragraph (\d+)", ground_truth)
    if not found:
        raise ValueError(f"retrieval_score expects a ground truth like 'Paragraph 12', got {ground_truth!r}.")
    return _share_of_numbers(prediction, found[0])


def count_score(prediction: str, ground_truth: str, **kwargs: object) -> float:
    """Share of the numbers in the prediction equal to the answer (passage_count).

    >>> count_score("There are 7 unique paragraphs", "7")
    1.0
    """
    return _share_of_numbers(prediction, str(ground_truth))


def fuzz_ratio(first: str, second: str) -> int:
    """``fuzzywuzzy.fuzz.ratio`` (pure-Python path): ``round(100 x SequenceMatcher ratio)``.

    >>> fuzz_ratio("abcd", "abce")
    75
    """
    if not first or not second:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, first, second).ratio()))


def code_sim_score(prediction: str, ground_truth: str, **kwargs: object) -> float:
    """Edit similarity of the first generated line that is not a comment or code fence.

    >>> code_sim_score("```\\nx = 1\\n", "x = 1")
    1.0
    """
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz_ratio(line, ground_truth) / 100
