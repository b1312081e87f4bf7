"""The collator's and the LLM's video-placeholder ids must agree: a mismatch is an error at setup, naming both."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tiny import WORDS
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from data_modules.datamodules import InstructionDataModule
from vrp.models import CausalLM
from vrp.training import data_hooks


def _module(dm, llm):
    vision = SimpleNamespace(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    return SimpleNamespace(
        trainer=SimpleNamespace(datamodule=dm), model=SimpleNamespace(vision=vision, llm=llm), hparams={}
    )


def test_setup_refuses_a_data_tokenizer_whose_video_id_differs(tiny_root, tmp_path):
    llm = CausalLM(str(tiny_root / "llm"))
    same = InstructionDataModule(tokenizer=str(tiny_root / "tokenizer"))
    data_hooks.configure_datamodule(_module(same, llm))  # the LLM's own tokenizer: fine
    assert same.collator().video_token_id == llm.video_token_id and same.image_size == 32
    # a tokenizer without <video>: the collator appends it, at another id than the LLM's
    tok = Tokenizer(
        models.WordLevel(
            vocab={t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}, unk_token="<unk>"
        )
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tmp_path / "other")
    other = InstructionDataModule(tokenizer=str(tmp_path / "other"))
    with pytest.raises(
        ValueError,
        match=rf"<video> the id {other.collator().video_token_id}, the LLM's tokenizer "
        rf"{llm.video_token_id}",
    ):
        data_hooks.configure_datamodule(_module(other, llm))
