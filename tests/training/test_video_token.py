"""The collator's and the LLM's video-placeholder ids must agree: a mismatch is an error at setup, naming both."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tiny_assets import SPECIALS, word_tokenizer

from data_modules.datamodules import InstructionDataModule
from vrp.models import CausalLM
from vrp.training import datamodule_handoff


def _module(dm, llm):
    vision = SimpleNamespace(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    return SimpleNamespace(
        trainer=SimpleNamespace(datamodule=dm),
        model=SimpleNamespace(vision=vision, llm=llm, fusion=SimpleNamespace(), objects=None, num_video_tokens=4),
        hparams={},
    )


def test_setup_refuses_a_data_tokenizer_whose_video_id_differs(tiny_root, tmp_path):
    llm = CausalLM(str(tiny_root / "llm"))
    same = InstructionDataModule(tokenizer=str(tiny_root / "tokenizer"))
    datamodule_handoff.configure_datamodule(_module(same, llm))  # the LLM's own tokenizer: fine
    assert same.collator().video_token_id == llm.video_token_id and same.image_size == 32
    # a tokenizer without <video>: the collator appends it, at another id than the LLM's
    without_video = [t for t in SPECIALS if t != "<video>"]
    word_tokenizer(specials=without_video, bos=False).save_pretrained(tmp_path / "other")
    other = InstructionDataModule(tokenizer=str(tmp_path / "other"))
    with pytest.raises(
        ValueError,
        match=rf"<video> the id {other.collator().video_token_id}, the LLM's tokenizer "
        rf"{llm.video_token_id}",
    ):
        datamodule_handoff.configure_datamodule(_module(other, llm))


def test_box_rows_go_to_the_datamodule_and_one_that_cannot_take_them_is_refused(tiny_root):
    dm = InstructionDataModule(tokenizer=str(tiny_root / "tokenizer"))
    module = _module(dm, CausalLM(str(tiny_root / "llm")))
    module.model.fusion = SimpleNamespace(box_substeps=4, requires_tracks=True)  # a track reader (TrackReader)
    module.model.objects = stage = SimpleNamespace(short_side=64)  # the model's object stage goes along
    datamodule_handoff.configure_datamodule(module)
    assert dm.box_substeps == 4 and dm.objects is stage and dm.clip_loader(train=False).objects is stage

    class Plain:  # a datamodule with none of the optional capabilities
        pass

    module.trainer.datamodule = Plain()
    with pytest.raises(ValueError, match="configure_box_substeps"):
        datamodule_handoff.configure_datamodule(module)
    module.model.fusion.box_substeps = 1
    datamodule_handoff.configure_datamodule(module)  # one row per frame needs nothing of it
    module.model.fusion = SimpleNamespace()  # a fusion that reads no tracks: one row per frame
    datamodule_handoff.configure_datamodule(module)
