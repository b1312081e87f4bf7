"""A `fast_dev_run` of every shipped embedded config (one train + one validation batch), with tiny backbones, a tiny
detector from stage 0, its tracks (`vrp track`) and a tiny synthetic set swapped in by the same CLI overrides a user
would type; stage 2 logs accuracy per question type, and the report's clip examples run on every trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_assets import EMBEDDED, ROOT, TINY_LLM, TINY_VIT, mc_source

from vrp.cli import cli
from vrp.evaluation.report import clip_examples

CONFIGS = [EMBEDDED / f"{stage}.yaml" for stage in ("finetune", "pretrain")]


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    from lab.prepare import save_random_backbones
    from lab.stage0 import pretrain_detector
    from lab.synthetic import generate
    from vrp.tools.track import main as track

    root = tmp_path_factory.mktemp("embedded_configs")
    generate(root / "data", videos=30, seed=0, workers=1, size=64)
    save_random_backbones(
        str(root / "data" / "tokenizer"),
        root / "backbones",
        seed=0,
        vit={**TINY_VIT, "image_size": 64},
        llm={**TINY_LLM, "max_position_embeddings": 512},
    )  # captions + 40 track tokens
    pretrain_detector(root / "backbones" / "detector", root / "data", steps=2, frames_per_video=2)
    captions = {  # every split's videos (a 30-video set leaves val / test without balanced MC items)
        f"--data.init_args.{split}": json.dumps(
            {
                "class_path": "data_modules.sources.CaptionManifest",
                "init_args": {
                    "path": str(root / "data" / split / "captions.csv"),
                    "video_column": "contentUrl",
                    "caption_column": "name",
                    "key_column": "videoid",
                },
            }
        )
        for split in ("val", "test")
    }
    overrides = [f"{k}={v}" for k, v in captions.items()]
    track(
        ["--config", str(CONFIGS[0]), "--out", str(root / "tracks"), "--workers", "0", *_model_paths(root), *overrides]
    )
    return root


def _model_paths(root: Path) -> list[str]:
    model = "--model.init_args.model.init_args"
    return [
        f"{model}.vision.init_args.model_name_or_path={root / 'backbones' / 'vit'}",
        f"{model}.llm.init_args.model_name_or_path={root / 'backbones' / 'llm'}",
        f"{model}.objects.init_args.detector.init_args.path={root / 'backbones' / 'detector'}",
        f"--data.init_args.root={root / 'data'}",
        "--data.init_args.feature_cache=null",  # decode: the cached path has its own test (test_cache.py)
    ]


def _overrides(root: Path, config: Path) -> list[str]:
    data = root / "data"
    args = [
        *_model_paths(root),
        f"--data.init_args.tracks={root / 'tracks'}",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={root / 'runs' / config.stem}",
    ]
    if "InstructionTuning" in config.read_text():  # a 30-video set leaves val with few balanced items: use train's
        args += [
            "--model.init_args.init_from=null",
            "--results.dir=null",
            f"--results.blind_baseline={data / 'meta.json'}",
            "--data.init_args.val=" + json.dumps(mc_source(data / "train" / "mc.csv", root / "tracks" / "train.json")),
        ]
    return args


def _checkout_runs() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the checkout's runs/embedded."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in (ROOT / "runs" / "embedded").rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_fast_dev_run_of_each_embedded_config(tiny_synthetic, config, monkeypatch):
    cwd = tiny_synthetic / "cwd" / config.stem
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)  # the configs' relative run folders (checkpoints, loggers) land here, not in the checkout
    before = _checkout_runs()
    run = cli(["fit", "--config", str(config), *_overrides(tiny_synthetic, config)])
    metrics = run.trainer.callback_metrics
    assert run.trainer.global_step == 1
    assert (cwd / "runs" / "embedded").is_dir()
    assert _checkout_runs() == before, "the test wrote into the checkout's runs/ (it replaced a user's last.ckpt)"
    if "InstructionTuning" in config.read_text():
        assert "val/loss" in metrics and "val/acc" in metrics
        assert any(k.startswith("val/acc_") for k in metrics)  # per question type
        assert 0.0 <= float(metrics["val/acc"]) <= 100.0
    # the report's clip examples read clips as `vrp ask` does: the fusion's box rows, tracks from the object stage
    blocks = clip_examples(run.model.model.eval(), str(tiny_synthetic / "data" / "train" / "mc.csv"), 1, cwd)
    assert len(blocks) == 1 and (cwd / "clip_0.png").is_file()


def test_the_default_reads_no_simulator_boxes(tiny_synthetic, tmp_path, monkeypatch):
    """With every split's boxes.json deleted, the stage-2 default still tests: its tracks come from the object stage."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic / "data", data)
    for boxes in data.glob("*/boxes.json"):
        boxes.unlink()
    monkeypatch.chdir(tmp_path)
    config = EMBEDDED / "finetune.yaml"
    args = [*_overrides(tiny_synthetic, config), f"--data.init_args.root={data}", "--trainer.logger=false"]
    args = [a for a in args if not a.startswith(("--trainer.fast_dev_run", "--data.init_args.val="))]
    # the train split's questions (a 30-video set leaves test without balanced items), on its tracks
    test = mc_source(data / "train" / "mc.csv", tiny_synthetic / "tracks" / "train.json")
    args.append("--data.init_args.test=" + json.dumps(test))
    run = cli(["test", "--config", str(config), *args, "--trainer.limit_test_batches=2"])
    assert "test/acc_overall" in run.trainer.callback_metrics
    assert not list(data.glob("*/boxes.json"))


def test_no_recipe_but_the_oracles_reads_simulator_boxes():
    """The simulator's boxes (`boxes.json`, `ground_truth_boxes`) are inputs of oracle rows only: every other shipped
    config (the stages, ablations, baselines, zero-shot) reads the object stage's tracks."""
    oracles = {"tracks_ground_truth.yaml", "state_oracle.yaml", "tracker_oracle.yaml"}
    readers = [
        p.relative_to(ROOT)
        for p in sorted((ROOT / "experiments").rglob("*.yaml"))
        if p.name not in oracles and ("boxes.json" in p.read_text() or "ground_truth_boxes: true" in p.read_text())
    ]
    assert readers == []
