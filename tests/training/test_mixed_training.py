"""An image + video + text-only LLaVA file trains: the three modalities share batches and the loss is finite."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from functools import partial

import lightning as L
import numpy as np
import torch
from PIL import Image
from tiny_assets import QUIET_TRAINER, TINY_QFORMER, llava_turn

from data_modules.datamodules import InstructionDataModule
from data_modules.sources import LlavaInstructions
from data_modules.video import write_video
from vrp.training.callbacks import StepLossLog


def test_a_mixed_llava_file_trains(tiny_root, tmp_path, caplog):
    from vrp.models import CausalLM, FrameQFormerFusion, HFVisionEncoder, VideoReasoner
    from vrp.training.stage2 import InstructionTuning

    frames = np.zeros((6, 32, 32, 3), np.uint8)
    frames[:, 8:16, 8:16, 2] = 255
    write_video(tmp_path / "blue.mp4", frames, fps=6)
    Image.fromarray(np.full((24, 40, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    items = [
        {"id": "v", "video": "blue.mp4", "conversations": llava_turn("<video>\nwhat colour is it ?", "blue")},
        {"id": "i", "image": "red.png", "conversations": llava_turn("<image>\nwhat colour is it ?", "red")},
        {"id": "t", "conversations": llava_turn("what colour is a video of shapes ?", "green")},
    ]
    (tmp_path / "mix.json").write_text(json.dumps(items * 2))
    caplog.set_level(logging.INFO)
    data = InstructionDataModule(
        train=LlavaInstructions(str(tmp_path / "mix.json"), text_only="train"),
        val=LlavaInstructions(str(tmp_path / "mix.json")),
        test=LlavaInstructions(str(tmp_path / "mix.json")),  # else the default test source is read from root
        tokenizer=str(tiny_root / "tokenizer"),
        num_frames=2,
        batch_size=3,
        num_workers=0,
        train_sampling="uniform",
    )
    torch.manual_seed(0)
    fusion = partial(
        FrameQFormerFusion, qformer=replace(TINY_QFORMER, vocab_size=64), video_num_query_tokens=2, video_num_layers=1
    )
    model = VideoReasoner(
        HFVisionEncoder(str(tiny_root / "vit")), fusion, CausalLM(str(tiny_root / "llm")), llm_mode="full"
    )
    trainer = L.Trainer(
        **QUIET_TRAINER,
        max_steps=2,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=[StepLossLog(str(tmp_path / "losses.jsonl"))],
    )
    trainer.fit(InstructionTuning(model, warmup_steps=1), datamodule=data)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert "train: 6 records from LlavaInstructions (video 2, image 2, text 2)" in caplog.text
    assert data.skip_counts()["skipped"] == 0
