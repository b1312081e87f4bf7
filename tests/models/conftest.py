"""Shared tiny assets for model tests: a word-level tokenizer of their vocabulary, with a chat template."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_assets import SPECIALS, word_tokenizer

WORDS = (
    "a red green blue circle square moves left right up down what is the colour shape of object "
    "it answer question video yes no one two three ? ."
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def build_tokenizer(path: Path, video_token: bool = True) -> Path:
    """Save a tiny word-level tokenizer (<pad> <s> </s> <unk> [<video>], a chat template) to ``path``."""
    specials = SPECIALS if video_token else [t for t in SPECIALS if t != "<video>"]
    word_tokenizer(WORDS, specials, chat_template=CHAT_TEMPLATE).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_tokenizer():
    """The ``build_tokenizer`` function, for tests that need a variant."""
    return build_tokenizer
