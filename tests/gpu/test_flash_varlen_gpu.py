"""GPU-only: flash-attn's variable-length kernel on ragged caches (skipped without CUDA and flash-attn).

Run on a GPU machine with ``python -m pytest tests/gpu -q`` (``scripts/gpu_check.sh`` runs it with
the timing comparison). On CPU-only machines, CI included, every test here is skipped; the same
routing is checked on CPU by ``tests/engine/test_varlen_attention.py`` with the reference kernel.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.engine.model_hooks import disable_compressed_decoding
from kvpress_lab.engine.prefill import padded_positions
from kvpress_lab.cache_layers.ragged import RaggedLayer
from kvpress_lab.cache_layers.varlen_attention import flash_attn_kernel, reference_varlen_attention
from helpers.tiny_models import left_pad, random_prompt, tiny_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="needs a CUDA GPU and flash-attn",
)


@pytest.mark.parametrize("queries", [1, 3])
@pytest.mark.parametrize("groups", [1, 4])
def test_flash_varlen_kernel_matches_the_reference(queries, groups):
    generator = torch.Generator(device="cuda").manual_seed(0)
    lengths = [5, 130, 17, 64, 1 + queries]
    D = 64
    q = torch.randn(len(lengths) * queries, groups, D, device="cuda", generator=generator, dtype=torch.bfloat16)
    k = torch.randn(sum(lengths), 1, D, device="cuda", generator=generator, dtype=torch.bfloat16)
    v = torch.randn(sum(lengths), 1, D, device="cuda", generator=generator, dtype=torch.bfloat16)
    cu_k = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    cu_q = torch.arange(len(lengths) + 1, dtype=torch.int32, device="cuda") * queries
    args = (q, k, v, cu_q, cu_k, queries, max(lengths))
    got = flash_attn_kernel()(*args, softmax_scale=D**-0.5, causal=True)
    want = reference_varlen_attention(*args, softmax_scale=D**-0.5, causal=True)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_flash_ragged_decoding_matches_sdpa_ragged_decoding(family):
    model = tiny_model(family).to("cuda", torch.bfloat16)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (300, 170)])
    ids, mask = ids.cuda(), mask.cuda()
    recipe = Recipe(allocator="pyramid", budget=64, window=8, head_allocation="adaptive")
    cache = recipe.prefill(model, ids, mask)  # sdpa prefill: both decodes start from one cache
    assert all(isinstance(layer, RaggedLayer) for layer in cache.layers)
    question = random_prompt(2, 4, seed=9).cuda()
    full_mask = torch.cat([mask, torch.ones_like(question)], 1)
    positions = padded_positions(full_mask)[:, -4:]
    try:
        with torch.no_grad():
            want = model(question, attention_mask=full_mask, position_ids=positions, cache=copy.deepcopy(cache)).logits
            model.config._attn_implementation = "flash_attention_2"
            got = model(question, attention_mask=full_mask, position_ids=positions, cache=cache).logits
    finally:
        model.config._attn_implementation = "sdpa"
        disable_compressed_decoding(model)
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)
