"""Stage 1 under test: `AlignmentPretraining` with ITC + ITM + LM on (hard negatives, boxes), a stage-1 checkpoint
loaded into stage 2 (`load_stage1`), and the test loop's results against a hand count."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial

import lightning as L
import pytest
import torch
from tiny_assets import ANSWERS, TINY_QFORMER, ToyData

from vrp.evaluation.callbacks import TestResults
from vrp.models import CausalLM, FrameQFormerFusion, HFVisionEncoder, MLPConnector, VideoReasoner
from vrp.scoring.scorers import MCOutput
from vrp.training import stage1
from vrp.training.stage1 import AlignmentPretraining
from vrp.training.stage2 import InstructionTuning

QFORMER = replace(TINY_QFORMER, vocab_size=32, objects=True, num_slots=2, init_std=0.1)
VIDEO_QFORMER = dict(video_num_query_tokens=2, video_num_layers=1)


def _reasoner(root, seed: int = 0, **options) -> VideoReasoner:
    """The tiny reasoner with the frame Q-Former of QFORMER, ``options`` replacing some of its options."""
    torch.manual_seed(seed)
    return VideoReasoner(
        HFVisionEncoder(str(root / "vit")),
        partial(FrameQFormerFusion, qformer=replace(QFORMER, **options), **VIDEO_QFORMER),
        CausalLM(str(root / "llm")),
    )


def _stage1(root) -> AlignmentPretraining:
    return AlignmentPretraining(
        _reasoner(root), itc_weight=1.0, itm_weight=1.0, lm_weight=1.0, embed_dim=16, lr=1e-3, warmup_steps=1
    )


def _trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        **kw,
    )


def test_all_three_losses_with_hard_negatives_and_boxes(tiny_root, monkeypatch):
    module = _stage1(tiny_root)
    data = ToyData(str(tiny_root / "tokenizer"), num_samples=4, boxes=True)
    batch = next(iter(data.train_dataloader()))
    assert batch["boxes"].shape == (4, 2, 2, 4)
    picks, joint_calls = [], []
    sample = stage1.sample_hard_negatives
    monkeypatch.setattr(stage1, "sample_hard_negatives", lambda sim: picks.append(sample(sim)) or picks[-1])
    joint = module.model.fusion.forward_with_text
    monkeypatch.setattr(
        module.model.fusion, "forward_with_text", lambda *a, **kw: joint_calls.append((a, kw)) or joint(*a, **kw)
    )
    parts = module.losses(batch)
    assert set(parts) == {"itc", "itm", "lm"} and all(torch.isfinite(v) for v in parts.values())
    assert len(picks) == 2 and all((p != torch.arange(4)).all() for p in picks)  # a negative is never the positive
    (((inputs,), _),) = joint_calls  # positives, video with a hard-negative text, text with a hard-negative video
    tracks = inputs.tracks
    assert inputs.visual.shape[0] == 12 and tracks.boxes.shape == (12, 2, 2, 4) and tracks.mask.shape == (12, 2, 2)
    torch.testing.assert_close(tracks.boxes[8:], batch["boxes"][picks[1]])
    module._total(parts).backward()
    heads = dict(module.heads.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.values()), sorted(heads)
    roi = module.model.fusion.objects.roi_proj.weight.grad  # boxes reach the object tokens (RoIAlign, not slots)
    assert roi is not None and roi.abs().sum() > 0


def test_stage1_checkpoint_loads_into_stage2(tiny_root, tmp_path):
    trainer = _trainer(
        tmp_path,
        max_steps=2,
        limit_val_batches=0,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)],
    )
    trainer.fit(_stage1(tiny_root), datamodule=ToyData(str(tiny_root / "tokenizer"), num_samples=8, boxes=True))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("heads.") for k in saved)
    model = _reasoner(tiny_root, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    InstructionTuning(model, init_from=str(tmp_path / "ckpt" / "last.ckpt")).init_from_stage1()
    own = model.state_dict()
    weights = {k[len("model.") :]: v for k, v in saved.items() if k.startswith("model.")}
    assert weights and all(k.startswith(("fusion.", "projection.")) for k in weights)
    for name, value in weights.items():  # every stage-1 weight arrived
        torch.testing.assert_close(own[name], value, rtol=0, atol=0)
    changed = [n for n, v in weights.items() if not torch.equal(before[n], v)]  # not merely equal inits (LayerNorms)
    assert len(changed) > len(weights) // 2 and "fusion.frame_qformer.query_tokens" in changed
    with pytest.raises(ValueError, match="fusion configs differ"):
        InstructionTuning(
            _reasoner(tiny_root, hidden_size=2 * QFORMER.hidden_size), init_from=str(tmp_path / "ckpt" / "last.ckpt")
        ).init_from_stage1()


class FirstOption:
    """Always picks option 0: the test table is then a count of answers that are option 0."""

    def __call__(self, model, batch) -> MCOutput:
        n = len(batch["options"])
        scores = torch.zeros(n, len(ANSWERS))
        scores[:, 0] = 1.0
        return MCOutput(scores, torch.zeros(n, dtype=torch.long))


def test_test_results_match_a_hand_count(tiny_root, tmp_path, capsys):
    torch.manual_seed(0)
    model = VideoReasoner(
        HFVisionEncoder(str(tiny_root / "vit")), partial(MLPConnector, output_dim=32), CausalLM(str(tiny_root / "llm"))
    )
    results = TestResults(dir=str(tmp_path / "results"))
    trainer = _trainer(tmp_path, callbacks=[results])
    trainer.test(
        InstructionTuning(model, scorer=FirstOption()), datamodule=ToyData(str(tiny_root / "tokenizer"), num_samples=10)
    )
    # ToyData's test split draws its answers first from a generator seeded with seed + 2; its types split them
    answers = torch.randint(0, len(ANSWERS), (10,), generator=torch.Generator().manual_seed(2)).tolist()
    types = ["descriptive" if a < 2 else "temporal" for a in answers]
    table = json.loads((tmp_path / "results" / "test_results.json").read_text())
    for t in ("descriptive", "temporal"):
        n = types.count(t)
        assert table["counts"][t] == n
        hits = sum(a == 0 for a, ty in zip(answers, types) if ty == t)
        assert table["accuracy"][t] == pytest.approx(100.0 * hits / n)
        assert table["chance"][t] == pytest.approx(100.0 / len(ANSWERS))
    assert table["counts"]["overall"] == 10
    assert table["accuracy"]["overall"] == pytest.approx(100.0 * answers.count(0) / 10)
    assert float(trainer.callback_metrics["test/acc_overall"]) == pytest.approx(table["accuracy"]["overall"])
    assert [r["prediction"] for r in table["rows"]] == [0] * 10 and [r["answer"] for r in table["rows"]] == answers
    out = capsys.readouterr().out
    assert "| question type | n | accuracy (%) | chance (%) |" in out and "test_results.md" in out
    assert (tmp_path / "results" / "test_results.md").read_text() in out
