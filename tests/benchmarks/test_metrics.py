"""LongBench metrics and RULER scoring against hand-computed values."""

from __future__ import annotations

import pytest

from kvpress_lab.benchmarks import metrics
from kvpress_lab.benchmarks.ruler import exact_match, string_match_all


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert metrics.normalize_answer("  The Cat,  an  apple!") == "cat apple"


def test_qa_f1_hand_computed():
    # prediction tokens: cat sat ; reference: cat sat down -> P = 2/2, R = 2/3, F1 = 0.8
    assert metrics.qa_f1_score("The cat sat.", "a cat sat down") == pytest.approx(0.8)
    # repeated tokens count with multiplicity
    assert metrics.qa_f1_score("x x y", "x y y") == pytest.approx(2 / 3)  # common {x:1, y:1} = 2, P = R = 2/3
    assert metrics.qa_f1_score("nothing", "else") == 0.0
    assert metrics.qa_f1_score("", "answer") == 0.0


def test_rouge_l_hand_computed():
    # unique words: ref {the, cat, lay, on, mat} = 5, hyp {the, cat, sat, on, mat} = 5;
    # LCS "the cat on the mat" -> union of words {the, cat, on, mat} = 4; P = R = 0.8
    assert metrics.rouge_score("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(0.8, abs=1e-7)
    assert metrics.rouge_score("a b c", "a b c") == pytest.approx(1.0, abs=1e-7)
    assert metrics.rouge_score("", "a b") == 0.0
    assert metrics.rouge_score("...", "a b") == 0.0  # no sentence left after splitting on "."


def test_rouge_l_is_summary_level_over_sentences():
    # ref sentences "a b", "c d"; hyp "a c. b d": LCS(r1, h1)={a}, LCS(r1, h2)={b} -> union {a, b}: +2;
    # r2: LCS(r2, h1)={c}, LCS(r2, h2)={d} -> union {a, b, c, d}: +2. overlap 4 / 4 words each side.
    assert metrics.rouge_l_f("a c. b d", "a b. c d") == pytest.approx(1.0, abs=1e-7)
    # one sentence each: the LCS the package reconstructs is "a c d" -> P = R = 3/4
    assert metrics.rouge_l_f("a c b d", "a b c d") == pytest.approx(0.75, abs=1e-7)


def test_classification_score():
    classes = ["Location", "Person", "Number", "Number of people"]
    assert metrics.classification_score("Location", "Location", all_classes=classes) == 1.0
    assert metrics.classification_score("Location or Person", "Person", all_classes=classes) == 0.5
    assert metrics.classification_score("Person", "Location", all_classes=classes) == 0.0
    # "Number" is inside the answer "Number of people" and differs from it: dropped, so 1/1
    assert metrics.classification_score("Number of people", "Number of people", all_classes=classes) == 1.0
    with pytest.raises(TypeError, match="all_classes"):
        metrics.classification_score("x", "y")


def test_retrieval_and_count_scores():
    assert metrics.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert metrics.retrieval_score("Paragraph 12 or Paragraph 3", "Paragraph 3") == 0.5
    assert metrics.retrieval_score("no idea", "Paragraph 3") == 0.0
    assert metrics.count_score("There are 4 unique paragraphs, 4 in total, not 5", "4") == pytest.approx(2 / 3)
    assert metrics.count_score("none", "4") == 0.0
    with pytest.raises(ValueError, match="Paragraph"):
        metrics.retrieval_score("1", "first")


def test_code_edit_similarity():
    # SequenceMatcher("abcd", "abce"): 3 matching chars, ratio 2*3/8 = 0.75
    assert metrics.fuzz_ratio("abcd", "abce") == 75
    assert metrics.code_sim_score("```python\n# comment\nreturn x + 1\n", "return x + 1") == 1.0
    assert metrics.code_sim_score("abcd", "abce") == 0.75
    assert metrics.code_sim_score("", "x = 1") == 0.0


def test_ruler_scores():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert string_match_all("only 123", ["123", "456"]) == 0.5
    assert string_match_all("ABCDE, fghij", ["abcde", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert exact_match("  Paris", "paris ") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])
