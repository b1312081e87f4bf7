"""lab.probe: trains a stage-2 config on in-memory frozen features and prints per-template train/test accuracy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tiny import TINY_LLM, TINY_VIT

from lab import probe


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    from lab.prepare import save_random_backbones
    from lab.synthetic import generate

    root = tmp_path_factory.mktemp("probe")
    generate(root / "data", videos=30, seed=0, workers=1)
    save_random_backbones(str(root / "data" / "tokenizer"), root / "backbones", seed=0, vit=TINY_VIT, llm=TINY_LLM)
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_steps": 6, "logger": False},
        "model": {
            "class_path": "vrp.training.InstructionTuning",
            "init_args": {
                "lr": 1e-3,
                "warmup_steps": 1,
                "model": {
                    "class_path": "vrp.models.VideoReasoner",
                    "init_args": {
                        "vision": {
                            "class_path": "vrp.models.HFVisionEncoder",
                            "init_args": {"model_name_or_path": str(root / "backbones" / "vit")},
                        },
                        "fusion": {
                            "class_path": "vrp.models.FrameQFormerFusion",
                            "init_args": {
                                "qformer": {
                                    "num_query_tokens": 2,
                                    "hidden_size": 32,
                                    "num_layers": 1,
                                    "num_heads": 2,
                                    "intermediate_size": 64,
                                    "num_frames": 2,
                                    "objects": True,
                                },
                                "video_num_query_tokens": 4,
                                "video_num_layers": 1,
                            },
                        },
                        "llm": {
                            "class_path": "vrp.models.CausalLM",
                            "init_args": {"model_name_or_path": str(root / "backbones" / "llm")},
                        },
                        "llm_mode": "full",
                    },
                },
            },
        },
        "data": {
            "class_path": "data_modules.datamodules.InstructionDataModule",
            "init_args": {
                "num_frames": 2,
                "batch_size": 4,
                "num_workers": 0,
                "root": str(root / "data"),
                "ground_truth_boxes": True,
                # a 30-video set leaves val/test with few balanced items: use train's mc.csv for both
                "val": {
                    "class_path": "data_modules.sources.MultipleChoice",
                    "init_args": {"path": str(root / "data" / "train" / "mc.csv")},
                },
                "test": {
                    "class_path": "data_modules.sources.MultipleChoice",
                    "init_args": {
                        "path": str(root / "data" / "train" / "mc.csv"),
                        "template": "<video>\n{question}",
                        "target": "text",
                        "boxes": str(root / "data" / "train" / "boxes.json"),
                    },
                },
            },
        },
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


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


def test_probe_rejects_an_empty_selection(config):
    with pytest.raises(SystemExit, match="no questions"):
        probe.main(["--config", str(config), "--templates", "no_such_template"])
