"""A character-level tokenizer for tiny random models: one id per character, no chat template."""

from __future__ import annotations

import torch

from helpers.tiny_models import VOCAB


class CharTokenizer:
    """Maps each character to one id in ``[3, VOCAB)``; enough for generate_answer and the needle builder."""

    pad_token_id = 0
    eos_token_id = 2
    chat_template = None

    def __call__(self, text, add_special_tokens=True, return_tensors=None, truncation=False):
        ids = [3 + ord(ch) % (VOCAB - 3) for ch in text]
        if return_tensors == "pt":
            ids = torch.tensor([ids], dtype=torch.long)
        return type("Encoding", (), {"input_ids": ids})()

    def decode(self, ids, skip_special_tokens=True):
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join(chr(ord("0") + (i - 3) % 10) for i in values if i >= 3)
