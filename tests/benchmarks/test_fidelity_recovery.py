"""The fidelity harness's comparison and recovery helpers, on hand-made tensors (kvpress itself is not needed).

Kept positions are recovered by matching key rows byte for byte (dense and ragged layers, through
the layer's own API), from kvpress's masks of pruned entries, or from kept indices; two kept sets
compare by their Jaccard index.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvpress_lab.benchmarks.fidelity_ours import our_head_keys
from kvpress_lab.benchmarks.kvpress_side import (
    RecoveryError,
    jaccard,
    kept_mask,
    mask_from_kept_indices,
    mask_from_pruned,
    match_rows,
)
from kvpress_lab.cache_layers import CompressedLayer, RaggedLayer

ROOT = Path(__file__).resolve().parents[2]


def _keys(heads: int = 2, length: int = 10, dim: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(heads, length, dim, generator=torch.Generator().manual_seed(seed))  # (Hkv, T, D)


def test_jaccard_of_hand_made_masks():
    a = torch.tensor([[True, True, False, False], [False, False, False, False]])
    b = torch.tensor([[True, False, True, False], [False, False, False, False]])
    assert jaccard(a, b).tolist() == pytest.approx([1 / 3, 1.0])  # both empty: identical
    assert jaccard(a, a).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="one shape"):
        jaccard(a, b[:1])


def test_match_rows_finds_each_row_in_any_order():
    reference = _keys()[0]  # (T, D)
    picked = torch.tensor([7, 2, 9, 0])
    assert match_rows(reference[picked].clone(), reference).tolist() == picked.tolist()
    assert match_rows(reference[:0], reference).tolist() == []


def test_match_rows_refuses_a_row_changed_by_one_ulp():
    reference = _keys()[0]
    rows = reference[[1, 4]].clone()
    rows[1, 2] = torch.nextafter(rows[1, 2], torch.tensor(float("inf")))
    with pytest.raises(RecoveryError, match="1 of 2 compressed key rows match no row"):
        match_rows(rows, reference)


def test_match_rows_refuses_ambiguous_and_repeated_matches():
    reference = _keys()[0]
    reference[6] = reference[3]
    with pytest.raises(RecoveryError, match="ambiguous"):
        match_rows(reference[[3]].clone(), reference)
    with pytest.raises(RecoveryError, match="same position"):
        match_rows(reference[[1, 1]].clone(), reference)
    with pytest.raises(ValueError, match="one dtype"):
        match_rows(reference[[1]].double(), reference)


def test_kept_mask_of_dense_compressed_layers():
    reference = [_keys(seed=0), _keys(seed=1)]  # L = 2 layers of (Hkv=2, T=10, D=4)
    kept = torch.tensor([[0, 3, 5, 9], [1, 2, 3, 4]])  # (Hkv, K): per-head positions of layer 0
    layer0 = CompressedLayer(reference[0].gather(1, kept[..., None].expand(-1, -1, 4))[None], torch.zeros(1, 2, 4, 4),
                             torch.ones(1, 4, dtype=torch.bool), 10)
    full = CompressedLayer(reference[1][None].clone(), torch.zeros(1, 2, 10, 4), torch.ones(1, 10, dtype=torch.bool), 10)
    mask = kept_mask([layer0, full], our_head_keys, reference)
    assert mask.shape == (2, 2, 10)
    assert torch.equal(mask[0], mask_from_kept_indices(kept, 10))
    assert bool(mask[1].all())


def test_kept_mask_of_a_ragged_layer_reads_each_heads_own_entries():
    reference = [_keys(heads=3, length=8)]
    valid = torch.tensor([[[True, False, True, False, False, False, False, True],
                           [True, True, True, True, True, True, True, True],
                           [False, False, False, False, False, True, False, False]]])  # (B, Hkv, T)
    ragged = RaggedLayer.from_dense(reference[0][None].clone(), torch.zeros(1, 3, 8, 4), valid, 8)
    mask = kept_mask([ragged], our_head_keys, reference)
    assert torch.equal(mask[0], valid[0])


def test_kept_mask_names_the_layer_and_head_that_failed():
    reference = [_keys(), _keys(seed=1)]
    wrong = CompressedLayer(reference[0][None].clone(), torch.zeros(1, 2, 10, 4), torch.ones(1, 10, dtype=torch.bool), 10)
    with pytest.raises(RecoveryError, match="layer 1, KV head 0"):
        kept_mask([wrong, wrong], our_head_keys, reference)  # layer 1 holds layer 0's keys


def test_masked_case_keeps_the_complement_of_the_pruned_entries():
    pruned = (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1]), torch.tensor([2, 0, 3]))  # kvpress's masked_key_indices
    mask = mask_from_pruned(pruned, num_heads=2, length=4)
    assert mask.tolist() == [[True, True, False, True], [False, True, True, False]]
    with pytest.raises(ValueError, match="batch row 0"):
        mask_from_pruned((torch.tensor([1]), torch.tensor([0]), torch.tensor([0])), 2, 4)


def test_side_script_imports_no_kvpress_lab_and_no_kvpress_at_module_level():
    tree = ast.parse((ROOT / "benchmarks" / "kvpress_side.py").read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    assert not [n for n in names if n.startswith("kvpress_lab")]  # it runs where kvpress_lab is not installed
    module_level = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
    module_level += [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module]
    assert not [n for n in module_level if n.split(".")[0] in ("kvpress", "transformers")]
    code = "import sys, kvpress_lab.benchmarks.fidelity; print('kvpress' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
