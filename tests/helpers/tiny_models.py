"""Tiny random-weight causal LMs for every supported family, built from configs (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")
VOCAB = 97

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA, G = 2
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def _config(family: str, layers: int = 4):
    common = dict(_COMMON, num_hidden_layers=layers)
    if family == "llama":
        return LlamaConfig(**common), LlamaForCausalLM
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None), MistralForCausalLM
    if family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False), Qwen2ForCausalLM
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=16, use_sliding_window=False), Qwen3ForCausalLM
    if family == "gemma3":
        config = Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"] * (layers // 2) + ["full_attention"] * (layers % 2),
            query_pre_attn_scalar=16,
        )
        return config, Gemma3ForCausalLM
    if family == "phi3":
        return Phi3Config(**common, sliding_window=None), Phi3ForCausalLM
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def tiny_model(family: str, attn_implementation: str = "sdpa", seed: int = 0, layers: int = 4) -> torch.nn.Module:
    """A random model of ``family`` (``layers`` layers, Hq=4, Hkv=2, D=16), float32, eval mode."""
    config, cls = _config(family, layers)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = cls(config)
    # Random init gives nearly uniform attention; sharpen it so scorers have something to rank.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                param.mul_(8.0)
    model.generation_config.eos_token_id = None  # random models must not stop early: lengths stay comparable
    return model.eval()


def random_prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """``(batch, length)`` token ids avoiding the special ids 0-2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D token tensors into ``(B, T)`` ids and attention mask."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row):] = row
        mask[b, length - len(row):] = 1
    return ids, mask
