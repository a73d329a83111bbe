"""The fidelity table: one row per case, ratio and prompt, comparing kvpress's record with ours.

:func:`compare` turns two records (:mod:`.kvpress_side`, :mod:`.fidelity_ours`) into a row:
Jaccard of the kept sets per layer and KV head (mean, min, heads identical), both answers and
the largest absolute difference of the first decoding step's logits. :func:`markdown_table` and
:func:`rst_table` render the rows (the ``.rst`` file is content only, a ``list-table`` to include).

Examples
--------
>>> row = {"press": "SnapKVPress", "recipe": "snapkv-kvpress", "ratio": 0.5, "tokens": 1022, "status": "ok",
...        "jaccard_mean": 1.0, "jaccard_min": 1.0, "identical_heads": "90/90", "answer_kvpress": "4172",
...        "answer_ours": "4172", "max_logit_diff": 2e-05, "kvpress_spread": None}
>>> print(markdown_table([row]).splitlines()[2])
| SnapKVPress | snapkv-kvpress | 0.5 | 1022 | 1.0000 | 1.0000 | 90/90 | 4172 | 4172 | 2e-05 | - |
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any


from kvpress_lab.benchmarks.kvpress_side import jaccard

__all__ = ["HEADERS", "compare", "missing_row", "markdown_table", "rst_table"]

HEADERS = ("press", "our recipe", "ratio", "T", "Jaccard mean", "Jaccard min", "identical heads", "kvpress answer",
           "our answer", "max |logit diff|", "kvpress spread J")


def _base(case: Any, recipe: str, ratio: float | None, tokens: int | None) -> dict:
    return {"case": case.name, "press": case.press, "recipe": recipe, "ratio": ratio, "tokens": tokens,
            "jaccard_mean": None, "jaccard_min": None, "identical_heads": None, "answer_kvpress": None,
            "answer_ours": None, "max_logit_diff": None, "kvpress_spread": None}


def missing_row(case: Any, recipe: str, ratio: float | None, status: str) -> dict:
    """The row of a case that did not run (``status``: ``"preset missing"``, ...)."""
    return {**_base(case, recipe, ratio, None), "status": status}


def compare(case: Any, recipe: str, kvpress: Mapping, ours: Mapping, decode: Any,
            spread: Mapping | None = None) -> dict:
    """The row of one run: ``kvpress`` and ``ours`` are records of the same case, ratio, prompt and seed.

    ``decode(ids) -> str`` turns answer ids into text; ``spread`` is kvpress's record with seed + 1
    (random sketches), whose Jaccard mean with ``kvpress`` is the row's ``kvpress_spread``.
    """
    row = _base(case, recipe, kvpress["ratio"], None)
    errors = [f"{side}: {record['error']}" for side, record in (("kvpress", kvpress), ("ours", ours)) if record["error"]]
    if errors:
        return {**row, "status": "error: " + "; ".join(errors)}
    if kvpress["kept"].shape != ours["kept"].shape:
        return {**row, "status": f"error: kept masks of shapes {tuple(kvpress['kept'].shape)} (kvpress) and "
                                 f"{tuple(ours['kept'].shape)} (ours)"}
    per_head = jaccard(kvpress["kept"], ours["kept"])  # (L, Hkv)
    identical = (kvpress["kept"] == ours["kept"]).all(dim=-1)
    row.update({
        "status": "ok", "tokens": int(kvpress["kept"].shape[-1]),
        "jaccard_mean": float(per_head.mean()), "jaccard_min": float(per_head.min()),
        "identical_heads": f"{int(identical.sum())}/{identical.numel()}", "jaccard_per_head": per_head.tolist(),
        "kept_kvpress": kvpress["kept"].sum(dim=-1).tolist(), "kept_ours": ours["kept"].sum(dim=-1).tolist(),
        "answer_kvpress": decode(kvpress["answer_ids"]), "answer_ours": decode(ours["answer_ids"]),
        "same_answer_ids": list(kvpress["answer_ids"]) == list(ours["answer_ids"]),
        "max_logit_diff": float((kvpress["first_logits"].float() - ours["first_logits"].float()).abs().max()),
        "seconds": {side: {k: record[k] for k in ("prefill_s", "forced_s", "answer_s") if k in record}
                    for side, record in (("kvpress", kvpress), ("ours", ours))},
        "recovery": {"kvpress": kvpress["recovery"], "ours": ours["recovery"]},
        "answer_note": kvpress.get("answer_note"),
    })
    if spread is not None:
        row["kvpress_spread"] = (None if spread["error"] else float(jaccard(kvpress["kept"], spread["kept"]).mean()))
    return row


def _cells(row: Mapping) -> list[str]:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    head = [row["press"], row["recipe"], "-" if row["ratio"] is None else f"{row['ratio']:g}",
            "-" if row["tokens"] is None else str(row["tokens"])]
    if row["status"] != "ok":
        return [*head, row["status"], "", "", "", "", "", ""]
    note = " [question fed token by token]" if row.get("answer_note") else ""
    return [*head, number(row["jaccard_mean"], ".4f"), number(row["jaccard_min"], ".4f"), row["identical_heads"],
            row["answer_kvpress"] + note, row["answer_ours"], number(row["max_logit_diff"], ".2g"),
            number(row["kvpress_spread"], ".4f")]


def markdown_table(rows: Sequence[Mapping]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (``|`` escaped, line breaks shown as ``⏎``)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "⏎") if text else ""

    lines = ["| " + " | ".join(cell(h) for h in HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell(c) for c in _cells(row)) + " |" for row in rows]
    return "\n".join(lines)


_RST_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # ASCII punctuation


def _rst_cell(text: str) -> str:
    """Cell text that reStructuredText shows literally: every punctuation character escaped, one line."""
    text = text.replace("\n", " ⏎ ").strip()
    return _RST_SPECIAL.sub(r"\\\1", text)


def rst_table(rows: Sequence[Mapping], title: str = "") -> str:
    """A ``list-table`` directive of ``rows`` (content only: a page includes it)."""
    out = [f".. list-table:: {title}".rstrip(), "   :header-rows: 1", ""]
    for cells in [list(HEADERS), *(_cells(row) for row in rows)]:
        out.append(f"   * - {_rst_cell(cells[0])}".rstrip())
        out += [f"     - {_rst_cell(cell)}".rstrip() for cell in cells[1:]]
    return "\n".join(out) + "\n"
