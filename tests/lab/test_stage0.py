"""Stage 0: per-patch labels from boxes, ViT pretraining on train frames only, saved in HF format and loaded by path."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_assets import TINY_LLM, TINY_VIT

from lab import prepare, stage0
from lab.stage0 import patch_labels
from lab.synthetic import generate


def _tiny_world(tmp_path, monkeypatch, *, seed: int, size: int) -> list[str]:
    """Ten synthetic videos of ``size`` px under ``tmp_path/data``, and `prepare` building tiny backbones for them."""
    generate(tmp_path / "data", videos=10, seed=seed, workers=1, size=size, min_frames=6, max_frames=8)
    monkeypatch.setattr(prepare, "VIT", {**TINY_VIT, "image_size": size})
    monkeypatch.setattr(prepare, "LLM", TINY_LLM)
    return ["--tokenizer", str(tmp_path / "data" / "tokenizer"), "--out", str(tmp_path / "emb")]


def _roots_read(monkeypatch, reader: str) -> list[str]:
    """The data roots that stage 0's frame reader ``reader`` is called with from now on."""
    read = []
    real = getattr(stage0, reader)
    monkeypatch.setattr(stage0, reader, lambda root, *a, **k: read.append(str(root)) or real(root, *a, **k))
    return read


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


def test_prepare_runs_stage0_on_train_frames_and_saves_by_path(tmp_path, monkeypatch):
    from vrp.models import HFVisionEncoder

    backbones = _tiny_world(tmp_path, monkeypatch, seed=2, size=64)
    read = _roots_read(monkeypatch, "training_frames")
    out = tmp_path / "emb"
    prepare.main([*backbones, "--vit-steps", "0"])
    assert json.loads((out / "vit" / "stage0.json").read_text()) == {"steps": 0}  # random ViT, recorded
    with pytest.raises(SystemExit, match="--overwrite"):  # never trained on top of a kept random ViT silently
        prepare.main([*backbones, "--vit-steps", "4"])
    (out / "vit" / "stage0.json").unlink()
    before = HFVisionEncoder(str(out / "vit")).backbone.state_dict()
    prepare.main([*backbones, "--data", str(tmp_path / "data"), "--vit-steps", "4"])
    report = json.loads((out / "vit" / "stage0.json").read_text())
    assert report["steps"] == 4 and report["frames"] > 0 and read == [str(tmp_path / "data")]
    after = HFVisionEncoder(str(out / "vit"))  # loads by path like any HF vision model, frozen
    assert not any(p.requires_grad for p in after.parameters())
    changed = [k for k, v in after.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the weights moved
    mtime = (out / "vit" / "stage0.json").stat().st_mtime
    prepare.main([*backbones, "--data", str(tmp_path / "data"), "--vit-steps", "4"])  # cached: not run again
    assert (out / "vit" / "stage0.json").stat().st_mtime == mtime


def test_prepare_pretrains_the_llm_on_knowledge_or_control_and_saves_by_path(tmp_path, monkeypatch):
    from vrp.models import CausalLM

    args = [*_tiny_world(tmp_path, monkeypatch, seed=2, size=32), "--data", str(tmp_path / "data")]
    out = tmp_path / "emb"
    prepare.main(args)
    before = CausalLM(str(out / "llm")).model.state_dict()
    knowledge = [*args, "--llm-corpus", "knowledge", "--llm-steps", "3", "--llm-scenes", "20"]
    prepare.main(knowledge)
    report = json.loads((out / "llm" / "stage0.json").read_text())
    assert report["steps"] == 3 and report["corpus"] == "knowledge" and report["scenes"] == 20
    assert report["documents"] > 20 and report["truncated"] == 0 and report["held_out_documents"] > 0
    assert report["world"]["max_frames"] == 8 and "0x6b6e6f77" in report["seed_stream"]
    assert set(report["probe"]) <= {"cause", "next", "without"} and report["probe"]
    assert report["held_out_loss"] < report["held_out_loss_start"]
    assert not (out / "vit" / "stage0.json").exists()  # the ViT was not asked for
    after = CausalLM(str(out / "llm"))  # loads by path like any HF causal LM
    assert [k for k, v in after.model.state_dict().items() if not torch.equal(v, before[k])]  # the weights moved
    mtime = (out / "llm" / "stage0.json").stat().st_mtime
    prepare.main(knowledge)  # cached: not trained again
    assert (out / "llm" / "stage0.json").stat().st_mtime == mtime
    with pytest.raises(SystemExit, match="--overwrite"):
        prepare.main([*args, "--llm-steps", "7"])
    with pytest.raises(SystemExit, match="corpus knowledge"):  # never a control trained on top of knowledge
        prepare.main([*args, "--llm-corpus", "control", "--llm-steps", "3", "--llm-scenes", "20"])
    prepare.main([*args, "--overwrite", "--llm-corpus", "control", "--llm-steps", "3", "--llm-scenes", "20"])
    control = json.loads((out / "llm" / "stage0.json").read_text())
    assert control["corpus"] == "control" and control["documents"] == report["documents"]
    assert control["truncated"] == 0 and control["max_length"] >= report["max_length"] == 160  # every token trained
    assert control["sentences"] == report["sentences"] and control["held_out_documents"] == report["held_out_documents"]
    assert control["held_out_loss_start"] == report["held_out_loss_start"]  # the same random LLM on the same text
    prepare.main([*args, "--overwrite"])  # fresh random backbones drop the old report
    assert not (out / "llm" / "stage0.json").exists()


def test_prepare_trains_the_detector_on_train_frames_and_it_loads_by_path(tmp_path, monkeypatch):
    from vrp.models.detection import CenterDetector
    from vrp.models.tracking import ObjectStage

    args = [*_tiny_world(tmp_path, monkeypatch, seed=3, size=64), "--data", str(tmp_path / "data")]
    read = _roots_read(monkeypatch, "detection_frames")
    out = tmp_path / "emb"
    prepare.main([*args, "--detector-steps", "3"])
    report = json.loads((out / "detector" / "stage0.json").read_text())
    assert report["steps"] == 3 and report["frames"] > 0 and read == [str(tmp_path / "data")]
    assert 0 <= report["held_out_precision"] <= 1 and 0 <= report["held_out_recall"] <= 1
    stage = ObjectStage(CenterDetector(str(out / "detector")), short_side=64)  # loads by path, frozen
    assert not any(p.requires_grad for p in stage.parameters())
    tracks = stage(torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8))
    assert tracks.shape[0] == 3 and tracks.shape[2] == 4
    mtime = (out / "detector" / "stage0.json").stat().st_mtime
    prepare.main([*args, "--detector-steps", "3"])  # cached: not trained again
    assert (out / "detector" / "stage0.json").stat().st_mtime == mtime
    with pytest.raises(SystemExit, match="--overwrite"):
        prepare.main([*args, "--detector-steps", "5"])
