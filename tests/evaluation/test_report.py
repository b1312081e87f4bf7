"""The report builds from a tiny run; cross-attention maps from hooks on a joint Q-Former."""

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_assets import TINY_QFORMER
from torch import nn

from data_modules.video import write_video
from vrp.evaluation.attention import cross_attention_maps
from vrp.evaluation.report import build_report, main
from vrp.evaluation.results import write_results
from vrp.models import FrameQFormerFusion, JointQFormerFusion
from vrp.models.contracts import FusionInput, TokenLayout


class Model(nn.Module):
    def __init__(self, vision, temporal, objects):
        super().__init__()
        self.vision = vision
        cls = FrameQFormerFusion if temporal == "per_frame" else JointQFormerFusion
        self.fusion = cls(
            TokenLayout.of(vision),
            qformer=replace(TINY_QFORMER, num_query_tokens=3, num_layers=2, num_frames=3, objects=objects, num_slots=2),
        )

    def encode_video(self, video, frame_mask, **unused):
        return self.fusion(FusionInput(self.vision(video), frame_mask))


@pytest.mark.parametrize("temporal,objects", [("per_frame", False), ("joint", True)])
def test_cross_attention_maps(reasoner, temporal, objects):
    torch.manual_seed(0)
    model = Model(reasoner.vision, temporal, objects).eval()
    batch = {"video": torch.randn(2, 3, 3, 16, 16), "frame_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()}
    maps = cross_attention_maps(model, batch)
    assert maps.shape == (2, 3, 2, 2)
    assert maps[1, 2].abs().sum() == 0  # the padding frame gets no attention
    assert (maps.sum((1, 2, 3)) <= 1 + 1e-5).all() and (maps.sum((1, 2, 3)) > 0.1).all()  # CLS/objects take the rest


def _tiny_run(tmp_path):
    run = tmp_path / "run" / "version_0"
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/loss", "val/acc", "val/acc_temporal"])
        for s in range(5):
            val = not s % 2
            w.writerow(
                [
                    0,
                    s,
                    3.0 - 0.4 * s,
                    2.9 - 0.3 * s if val else "",
                    25.0 + 5 * s if val else "",
                    20.0 + 4 * s if val else "",
                ]
            )
    rows = [
        {"key": f"k{i}", "type": t, "prediction": i % 2, "answer": 0, "num_options": 4}
        for i, t in enumerate(["descriptive", "temporal", "descriptive", "predictive"])
    ]
    write_results(run, rows)
    return tmp_path / "run"


def test_report_builds_from_tiny_run(reasoner, tmp_path):
    run = _tiny_run(tmp_path)
    videos = tmp_path / "mc" / "videos"
    videos.mkdir(parents=True)
    write_video(videos / "v0.mp4", np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), fps=4)
    (tmp_path / "mc" / "mc.csv").write_text(
        "video,question,answer,a0,a1,a2,a3,a4,qid,type\n"
        "v0,what colour is the ball ?,1,red,blue,green,yellow,,0,descriptive\n"
    )
    path = build_report(
        tmp_path / "out",
        {"model": str(run), "blind": str(run)},
        {"stage2": str(run)},
        model=reasoner,
        mc_csv=str(tmp_path / "mc" / "mc.csv"),
        clips=1,
    )
    text = path.read_text()
    for png in ("curves.png", "accuracy.png", "clip_0.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000 and png in text
    assert "| descriptive | 100.0 | 100.0 | 25.0 |" in text and "what colour is the ball ?" in text


def test_report_cli_errors_in_one_line(tmp_path, capsys):
    try:
        main(["--results", f"model={tmp_path}", "--out", str(tmp_path / "o")])
    except SystemExit as e:
        assert str(e.code).startswith("error: no test_results.json under")
    else:
        raise AssertionError("expected an error")


def test_curves_come_from_the_training_run_not_a_later_test_run(tmp_path):
    from vrp.evaluation.report import read_curves

    run = _tiny_run(tmp_path)
    test_csv = run / "test" / "version_0" / "csv" / "metrics.csv"  # what `vrp test` writes later, in its own folder
    test_csv.parent.mkdir(parents=True)
    test_csv.write_text("epoch,step,test/acc_overall\n0,0,50.0\n")
    curves = read_curves(run)
    assert sorted(curves) == ["train/loss", "val/acc", "val/acc_temporal", "val/loss"]  # accuracy beside the loss
    assert len(curves["train/loss"][0]) == 5 and curves["val/acc"] == ([0.0, 2.0, 4.0], [25.0, 35.0, 45.0])
