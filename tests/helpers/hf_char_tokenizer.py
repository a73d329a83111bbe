"""A real ``transformers`` tokenizer for the tiny random models: one token per character, built offline.

Tools that need a ``PreTrainedTokenizerFast`` (lm-eval's ``HFLM``: padding, batch encoding,
decoding) get one without any download. Ids follow :mod:`helpers.tiny_models`: 0 pad, 1 bos,
2 eos, then space, newline and the printable ASCII characters ``!`` .. ``|`` (``VOCAB`` ids in all).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from helpers.tiny_models import VOCAB

SPECIAL = ("<pad>", "<s>", "</s>")
CHARACTERS = (" ", "\n", *(chr(code) for code in range(33, 33 + VOCAB - len(SPECIAL) - 2)))


def hf_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer over ``VOCAB`` ids; unknown characters map to ``<pad>``; left padding."""
    vocab = {token: i for i, token in enumerate((*SPECIAL, *CHARACTERS))}
    assert len(vocab) == VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<pad>", padding_side="left")
