"""Stage 0: per-patch labels from boxes, ViT pretraining on train frames only, saved in HF format and loaded by path."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import TINY_LLM, TINY_VIT

from vrp.training.stage0 import patch_labels


def test_patch_labels_mark_covered_patches_nearest_object_wins():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 1.0], [float("nan")] * 4])
    colour, shape = patch_labels(
        boxes,
        ["red circle", "blue cross", "green square"],
        (2, 2),
        ["red", "green", "blue"],
        ["circle", "square", "cross"],
    )
    # patch centres (0.25,0.25) (0.75,0.25) (0.25,0.75) (0.75,0.75) all lie in the blue box; the first is also in the
    # red one and nearer its centre
    assert colour.tolist() == [1, 3, 3, 3] and shape.tolist() == [1, 3, 3, 3]
    colour, _ = patch_labels(boxes[:1], ["red circle"], (2, 2), ["red"], ["circle"])
    assert colour.tolist() == [1, 0, 0, 0]


def test_vrp_prepare_runs_stage0_on_train_frames_and_saves_by_path(tmp_path, monkeypatch):
    from data_modules.synthetic import generate
    from vrp.models import HFVisionEncoder
    from vrp.training import stage0, tiny_backbones

    generate(tmp_path / "data", videos=10, seed=2, workers=1, size=64, min_frames=6, max_frames=8)
    monkeypatch.setattr(tiny_backbones, "VIT", {**TINY_VIT, "image_size": 64})
    monkeypatch.setattr(tiny_backbones, "LLM", TINY_LLM)
    read = []
    real = stage0.training_frames
    monkeypatch.setattr(stage0, "training_frames", lambda root, *a, **k: read.append(str(root)) or real(root, *a, **k))
    out = tmp_path / "emb"
    tiny_backbones.main(["--tokenizer", str(tmp_path / "data" / "tokenizer"), "--out", str(out), "--vit-steps", "0"])
    assert json.loads((out / "vit" / "stage0.json").read_text()) == {"steps": 0}  # random ViT, recorded
    with pytest.raises(SystemExit, match="--overwrite"):  # never trained on top of a kept random ViT silently
        tiny_backbones.main(
            ["--tokenizer", str(tmp_path / "data" / "tokenizer"), "--out", str(out), "--vit-steps", "4"]
        )
    (out / "vit" / "stage0.json").unlink()
    before = HFVisionEncoder(str(out / "vit")).backbone.state_dict()
    tiny_backbones.main(
        [
            "--tokenizer",
            str(tmp_path / "data" / "tokenizer"),
            "--out",
            str(out),
            "--data",
            str(tmp_path / "data"),
            "--vit-steps",
            "4",
        ]
    )
    report = json.loads((out / "vit" / "stage0.json").read_text())
    assert report["steps"] == 4 and report["frames"] > 0 and read == [str(tmp_path / "data")]
    after = HFVisionEncoder(str(out / "vit"))  # loads by path like any HF vision model, frozen
    assert not any(p.requires_grad for p in after.parameters())
    changed = [k for k, v in after.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the weights moved
    mtime = (out / "vit" / "stage0.json").stat().st_mtime
    tiny_backbones.main(
        [
            "--tokenizer",
            str(tmp_path / "data" / "tokenizer"),
            "--out",
            str(out),
            "--data",
            str(tmp_path / "data"),
            "--vit-steps",
            "4",
        ]
    )  # cached: not run again
    assert (out / "vit" / "stage0.json").stat().st_mtime == mtime
