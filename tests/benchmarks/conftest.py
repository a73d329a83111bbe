"""Fixtures for the benchmark tests: a tiny random Llama and a character-level tokenizer."""

from __future__ import annotations

import pytest

from helpers.char_tokenizer import CharTokenizer
from helpers.tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_model("llama", layers=4)


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()
