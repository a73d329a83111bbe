"""Model loading for kvpress_lab, including the embedded default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from .embedded import (
    CACHE_DIR_ENV,
    EMBEDDED_DISTRIBUTION,
    EMBEDDED_MODEL_ALIASES,
    EMBEDDED_MODEL_NAME,
    EmbeddedModelNotFoundError,
    embedded_checkpoint_dir,
    embedded_gguf_path,
    is_embedded_model_name,
    load_model,
)

__all__ = [
    "CACHE_DIR_ENV",
    "EMBEDDED_DISTRIBUTION",
    "EMBEDDED_MODEL_ALIASES",
    "EMBEDDED_MODEL_NAME",
    "EmbeddedModelNotFoundError",
    "embedded_checkpoint_dir",
    "embedded_gguf_path",
    "is_embedded_model_name",
    "load_model",
]
