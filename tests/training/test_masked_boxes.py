"""Masked box modelling as a stage objective (`masked_box_weight` of stage 1 and stage 2): the losses it adds, what
trains, the encoder running once per batch, the metrics it logs, and the errors for a fusion without it."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from tiny import ToyData

from vrp.models import CausalLM, HFVisionEncoder, MLPConnector, TrackFusion, VideoReasoner
from vrp.training.stage1 import AlignmentPretraining
from vrp.training.stage2 import InstructionTuning

TRACKS = dict(max_objects=2, num_frames=2, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def _reasoner(root, fusion=None, **modes) -> VideoReasoner:
    torch.manual_seed(0)
    return VideoReasoner(
        HFVisionEncoder(str(root / "vit")),
        fusion or partial(TrackFusion, masked_boxes=True, **TRACKS),
        CausalLM(str(root / "llm")),
        **modes,
    )


def _batch(root):
    return next(iter(ToyData(str(root / "tokenizer"), num_samples=4, boxes=True).train_dataloader()))


def _count_encoder_calls(model, monkeypatch) -> list[int]:
    calls, forward = [], model.vision.forward
    monkeypatch.setattr(model.vision, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    return calls


def test_stage1_adds_the_box_loss_and_trains_the_fusion_with_it(tiny_root, monkeypatch):
    module = AlignmentPretraining(
        _reasoner(tiny_root), itc_weight=0.0, itm_weight=0.0, lm_weight=1.0, masked_box_weight=2.0
    )
    calls = _count_encoder_calls(module.model, monkeypatch)
    parts = module.losses(_batch(tiny_root))
    assert set(parts) == {"lm", "masked_boxes"} and len(calls) == 1  # one encoder pass feeds both
    torch.testing.assert_close(module._total(parts), parts["lm"] + 2.0 * parts["masked_boxes"])
    parts["masked_boxes"].backward()
    fusion = module.model.fusion
    assert fusion.box_head.weight.grad.abs().sum() > 0 and fusion.hidden_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model.llm.parameters())  # the box loss never reaches the LLM
    box_only = AlignmentPretraining(_reasoner(tiny_root), itc_weight=0.0, itm_weight=0.0, lm_weight=0.0,
                                    masked_box_weight=1.0)  # fmt: skip
    assert set(box_only.losses(_batch(tiny_root))) == {"masked_boxes"}  # a box-only stage 1 is allowed


def test_stage2_adds_the_box_loss_and_logs_both_parts(tiny_root, tmp_path, monkeypatch):
    module = InstructionTuning(_reasoner(tiny_root, llm_mode="full"), masked_box_weight=0.5, lr=1e-3, warmup_steps=1)
    calls = _count_encoder_calls(module.model, monkeypatch)
    parts = module.losses(_batch(tiny_root))
    assert set(parts) == {"loss", "answer", "masked_boxes"} and len(calls) == 1
    torch.testing.assert_close(parts["loss"], parts["answer"] + 0.5 * parts["masked_boxes"])
    plain = InstructionTuning(_reasoner(tiny_root, llm_mode="full"))
    assert set(plain.losses(_batch(tiny_root))) == {"loss", "answer"}  # off by default
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(module, datamodule=ToyData(str(tiny_root / "tokenizer"), num_samples=8, boxes=True))
    logged = trainer.callback_metrics
    assert {"train/loss", "train/answer_loss", "train/masked_box_loss"} <= set(logged)
    assert torch.isfinite(logged["train/masked_box_loss"])


@pytest.mark.parametrize(
    "fusion",
    [partial(TrackFusion, **TRACKS), partial(MLPConnector, temporal_bins=1, spatial_size=(1, 1))],
    ids=["tracks-without-it", "mlp"],
)
def test_a_fusion_without_the_objective_is_refused_by_both_stages(tiny_root, fusion):
    with pytest.raises(ValueError, match="masked_boxes: true"):
        AlignmentPretraining(_reasoner(tiny_root, fusion), itc_weight=0.0, itm_weight=0.0, masked_box_weight=1.0)
    with pytest.raises(ValueError, match="masked_boxes: true"):
        InstructionTuning(_reasoner(tiny_root, fusion), masked_box_weight=1.0)
