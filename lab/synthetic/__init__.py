"""Synthetic causal-physics video benchmark: simulator, renderer, balanced questions, writers and a tokenizer."""

from lab.synthetic.writer import generate

__all__ = ["generate"]
