"""Config dicts of tiny backbones: a ViT for ``HFVisionEncoder(config=...)`` and a Llama for
``CausalLM(config=...)``, small enough to build in tests and benchmarks in a moment."""

from __future__ import annotations


def tiny_vit_config(
    image_size: int = 32, patch_size: int = 8, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4
) -> dict:
    """Config dict of a tiny ViT (for ``HFVisionEncoder(config=...)``)."""
    return {
        "model_type": "vit",
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": 4 * hidden_size,
    }


def tiny_llama_config(hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4) -> dict:
    """Config dict of a tiny Llama (for ``CausalLM(config=...)``; the vocabulary size comes from the tokenizer)."""
    return {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }
