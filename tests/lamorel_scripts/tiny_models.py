"""Tiny test models that share the offline teacher's word-level tokenizer (bidir.models.SHAPES)."""
from pathlib import Path

from bidir.models import build_model


def build_tiny_gpt2(path, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 (n_embd=32: GPT-2 names its width differently from T5 and Llama)."""
    return build_model(path, "tiny-gpt2", seed)


def build_tiny_qwen2(path, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 (hidden 32, grouped-query attention with 2 key/value heads)."""
    return build_model(path, "tiny-qwen2", seed)
