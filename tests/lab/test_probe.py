"""lab.probe: trains a stage-2 config on in-memory frozen features and prints per-template train/test accuracy."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_assets import (
    TINY_LLM,
    TINY_QFORMER,
    TINY_VIT,
    frame_qformer,
    mc_source,
    reasoner,
    stage_config,
    synthetic_data,
)

from lab import probe


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    from lab.prepare import save_random_backbones
    from lab.synthetic import generate

    root = tmp_path_factory.mktemp("probe")
    generate(root / "data", videos=30, seed=0, workers=1)
    save_random_backbones(str(root / "data" / "tokenizer"), root / "backbones", seed=0, vit=TINY_VIT, llm=TINY_LLM)
    train = root / "data" / "train"
    # a 30-video set leaves val/test with few balanced items: use train's mc.csv for both
    val = {"class_path": "data_modules.sources.MultipleChoice", "init_args": {"path": str(train / "mc.csv")}}
    overlay = {
        "trainer": {"max_steps": 6, "logger": False},
        "data": {"init_args": {"val": val, "test": mc_source(train / "mc.csv", train / "boxes.json")}},
    }
    fusion = reasoner({"fusion": frame_qformer(replace(TINY_QFORMER, objects=True)), "objects": None})
    return stage_config(root / "run", root / "backbones", synthetic_data(root / "data", boxes=True), overlay, fusion)


def _table(text: str, split: str) -> dict[str, float]:
    line = next(x for x in text.splitlines() if x.strip().startswith(f"{split}:"))
    return {k: float(v) for k, v in re.findall(r"(\S+) ([0-9.]+)", line.split(":", 1)[1])}


def test_probe_prints_train_and_test_accuracy(config, capsys):
    probe.main(["--config", str(config), "--eval-every", "3", "--eval-questions", "12"])
    out = capsys.readouterr().out
    assert "step 3" in out and "step 6" in out
    for split in ("train", "test"):
        table = _table(out, split)
        assert "[all]" in table and all(0.0 <= v <= 100.0 for v in table.values())


def test_probe_filters_templates(config, capsys):
    probe.main(
        [
            "--config",
            str(config),
            "--steps",
            "2",
            "--eval-every",
            "2",
            "--templates",
            "count,shape",
            "--eval-questions",
            "12",
        ]
    )
    names = {k for k in _table(capsys.readouterr().out, "test") if not k.startswith("[")}
    assert names and names <= {"count", "shape"}


def test_probe_starts_from_the_stage1_checkpoint_unless_told_not_to(config, monkeypatch, capsys):
    """`init_from` is read in `setup("fit")`, which the probe does not run: it must load it itself."""
    from vrp.training import InstructionTuning

    calls = []
    monkeypatch.setattr(
        InstructionTuning, "init_from_stage1", lambda self: calls.append(self.hparams.init_from) or ([], [])
    )
    common = ["--config", str(config), "--steps", "1", "--eval-every", "1", "--eval-questions", "4"]
    probe.main(common)
    assert calls == [] and "stage 1:" not in capsys.readouterr().out  # the tiny config has no init_from
    overlay = config.parent / "init.yaml"
    overlay.write_text("model: {init_args: {init_from: stage1.ckpt}}\n")
    probe.main([*common, "--config", str(overlay)])
    assert calls == ["stage1.ckpt"] and "stage 1: 0 tensors from stage1.ckpt" in capsys.readouterr().out
    probe.main([*common, "--config", str(overlay), "--no-init"])
    assert calls == ["stage1.ckpt"]


def test_probe_rejects_an_empty_selection(config):
    with pytest.raises(SystemExit, match="no questions"):
        probe.main(["--config", str(config), "--templates", "no_such_template"])
