"""LongBench loader, official templates, middle truncation and scoring on hand-written records."""

from __future__ import annotations

import json

import pytest

from kvpress_lab.benchmarks import longbench
from kvpress_lab.benchmarks.bench import split_longbench_prompt
from kvpress_lab.benchmarks.longbench_prompts import DATASET2MAXLEN, DATASET2PROMPT

ENGLISH_TASKS = {"narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum",
                 "multi_news", "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p"}


def record(**fields):
    base = {"input": "Who wrote it?", "context": "Passage 1:\nAlice wrote the book.", "answers": ["Alice"],
            "length": 6, "all_classes": None, "language": "en", "_id": "id-0"}
    return {**base, **fields}


def write(tmp_path, task, records):
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_main_english_task_has_template_length_and_metric():
    assert set(DATASET2PROMPT) == set(DATASET2MAXLEN) == set(longbench.DATASET2METRIC) == ENGLISH_TASKS
    assert DATASET2MAXLEN["gov_report"] == 512 and DATASET2MAXLEN["hotpotqa"] == 32 and DATASET2MAXLEN["lcc"] == 64


def test_templates_match_the_official_text():
    assert DATASET2PROMPT["hotpotqa"] == (
        "Answer the question based on the given passages. Only give me the answer and do not output any other words."
        "\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only "
        "give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:")
    assert DATASET2PROMPT["qasper"].count('write "unanswerable"') == 2
    assert "\n\n Answer the question based on the above article as concisely" in DATASET2PROMPT["qasper"]
    assert "asconcisely" in DATASET2PROMPT["narrativeqa"]  # the official typo, kept
    assert DATASET2PROMPT["repobench-p"] == "Please complete the code given below. \n{context}{input}Next line of code:\n"


def test_load_task_reads_records_and_limit(tmp_path):
    write(tmp_path, "hotpotqa", [record(_id=f"id-{i}") for i in range(3)])
    records = longbench.load_task(tmp_path, "hotpotqa")
    assert [r["_id"] for r in records] == ["id-0", "id-1", "id-2"]
    assert len(longbench.load_task(tmp_path, "hotpotqa", limit=2)) == 2


def test_load_task_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown LongBench task 'hotpot'"):
        longbench.load_task(tmp_path, "hotpot")
    with pytest.raises(FileNotFoundError, match="qasper.jsonl"):
        longbench.load_task(tmp_path, "qasper")
    broken = record()
    del broken["answers"]
    write(tmp_path, "trec", [broken])
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['answers'\]"):
        longbench.load_task(tmp_path, "trec")


def test_build_prompt_fills_context_and_input():
    prompt = longbench.build_prompt("multifieldqa_en", record())
    assert prompt.startswith("Read the following text and answer briefly.\n\nPassage 1:\nAlice wrote the book.\n\n")
    assert prompt.endswith("Question: Who wrote it?\nAnswer:")
    assert longbench.build_prompt("lcc", record(context="def f():\n")) == (
        "Please complete the code given below. \ndef f():\nNext line of code:\n")


class CharTokenizer:
    """One token per character: makes the middle cut easy to check by hand."""

    def __call__(self, text, truncation=False):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})()

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_truncate_middle_keeps_both_ends():
    assert longbench.truncate_middle("0123456789", CharTokenizer(), 20) == "0123456789"
    assert longbench.truncate_middle("0123456789", CharTokenizer(), 6) == "012789"
    assert longbench.truncate_middle("0123456789", CharTokenizer(), 7) == "012789"  # int(7 / 2) = 3 per side


def test_score_task_takes_the_best_answer_and_cuts_few_shot_predictions():
    records = [record(answers=["Alice", "Alice Smith"]), record(answers=["Bob"])]
    assert longbench.score_task("hotpotqa", ["Alice Smith", "Carol"], records) == 50.0
    # triviaqa scores the first line only
    assert longbench.score_prediction("triviaqa", "\nAlice\nBob", ["Bob"], None) == 0.0
    trec = record(answers=["Location"], all_classes=["Location", "Person"])
    assert longbench.score_task("trec", ["Location\nPerson"], [trec]) == 100.0
    assert longbench.score_task("passage_retrieval_en", ["Paragraph 2"], [record(answers=["Paragraph 2"])]) == 100.0
    assert longbench.average_score({"a": 50.0, "b": 25.0}) == 37.5
    with pytest.raises(ValueError, match="one prediction per record"):
        longbench.score_task("hotpotqa", [], records)


def test_chat_template_follows_the_official_exceptions():
    assert not longbench.uses_chat_template("trec") and not longbench.uses_chat_template("lcc")
    assert longbench.uses_chat_template("hotpotqa") and longbench.uses_chat_template("gov_report")


def test_query_agnostic_split_puts_the_question_after_the_context():
    r = record()
    context, question = split_longbench_prompt("hotpotqa", r, longbench.build_prompt("hotpotqa", r))
    assert context.endswith("Alice wrote the book.") and question.startswith("\n\nAnswer the question")
    assert question.endswith("Question: Who wrote it?\nAnswer:")
