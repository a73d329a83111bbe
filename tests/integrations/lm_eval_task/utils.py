"""Loads the task documents from docs.jsonl next to this file: no dataset hub, works offline from any directory."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

DOCS = Path(__file__).with_name("docs.jsonl")


def load_docs(**kwargs) -> dict[str, datasets.Dataset]:
    """lm-eval's ``custom_dataset`` hook: ``{"test": Dataset}`` of the JSONL records (``kwargs``: task metadata, unused)."""
    records = [json.loads(line) for line in DOCS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(records)}
