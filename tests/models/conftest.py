"""Shared tiny assets for model tests: a word-level HF tokenizer built offline with `tokenizers`."""

from __future__ import annotations

from pathlib import Path

import pytest

WORDS = (
    "a red green blue circle square moves left right up down what is the colour shape of object "
    "it answer question video yes no one two three ? ."
).split()


def build_tokenizer(path: Path, video_token: bool = True) -> Path:
    """Save a tiny fast tokenizer (<pad> <s> </s> <unk> [<video>], a chat template) to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"] + (["<video>"] if video_token else [])
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<video>"] if video_token else [],
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_tokenizer():
    """The ``build_tokenizer`` function, for tests that need a variant."""
    return build_tokenizer
