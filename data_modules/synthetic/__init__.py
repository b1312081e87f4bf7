"""Synthetic causal-physics video benchmark: simulator, renderer, balanced questions, writers and a tokenizer."""

from data_modules.synthetic.writer import generate

__all__ = ["generate"]
