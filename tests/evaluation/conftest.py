"""Tiny word-level tokenizer and Llama for the evaluation tests (built offline, under a fixed seed)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from tiny_assets import TINY_LLM, TINY_VIT, word_tokenizer
from transformers import PreTrainedTokenizerFast

from vrp.models.connectors import MLPConnector, PoolOptions
from vrp.models.llm import CausalLM
from vrp.models.reasoner import VideoReasoner
from vrp.models.vision import HFVisionEncoder

torch.set_num_threads(min(2, torch.get_num_threads()))

WORDS = (
    "what colour is the ball red blue green yellow small big cube moves left right next A B C D E . ? : "
    "question answer user assistant USER ASSISTANT"
).split()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    """No chat template: prompts take the plain "USER: ... ASSISTANT: " form, its colons split off."""
    path = tmp_path_factory.mktemp("tokenizer")
    word_tokenizer(WORDS, punctuation=True).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


def make_reasoner(tokenizer_dir: str, seed: int = 0):
    """A tiny VideoReasoner (tiny ViT on 16x16 frames, MLP connector with 2 tokens, tiny Llama), eval mode."""
    torch.manual_seed(seed)
    vision = HFVisionEncoder(config={**TINY_VIT, "image_size": 16})
    llm = CausalLM(config={**TINY_LLM, "max_position_embeddings": 256}, tokenizer=tokenizer_dir)
    fusion = partial(MLPConnector, pool=PoolOptions(temporal_bins=2, spatial_size=(1, 1)))
    return VideoReasoner(vision, fusion, llm).eval()


@pytest.fixture(scope="session")
def reasoner(tokenizer_dir):
    return make_reasoner(tokenizer_dir)
