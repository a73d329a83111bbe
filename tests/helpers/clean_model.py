"""Whether kvpress_lab left anything on a model: hooks, attributes, a ``generate`` wrapper."""

from __future__ import annotations

import pytest

from helpers.tiny_models import tiny_model

__all__ = ["assert_clean", "is_compressed", "checked_llama"]


def assert_clean(model) -> None:
    """No kvpress_lab hook, attribute or generate wrapper is left on ``model`` (no other code adds hooks in tests)."""
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, f"hook left on {name or 'the model'}"
    assert not [a for a in vars(model) if a.startswith("_kvpress_lab")], "attribute left on the model"
    assert "generate" not in vars(model), "generate wrapper left on the model"
    assert model.config._attn_implementation in ("sdpa", "eager")


def is_compressed(cache) -> bool:
    """Whether ``cache`` holds at least one compressed layer."""
    return any(hasattr(layer, "prepare_decoding") for layer in cache.layers)


@pytest.fixture(name="model")
def checked_llama():
    """Fixture ``model``: a tiny Llama, checked clean after the test (its decoding hooks removed first).

    Import it into a test module (``from helpers.clean_model import checked_llama``) to override
    the per-family ``model`` fixture of ``conftest.py``.
    """
    from kvpress_lab.engine.model_hooks import disable_compressed_decoding

    model = tiny_model("llama")
    yield model
    disable_compressed_decoding(model)
    assert_clean(model)
