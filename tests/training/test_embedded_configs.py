"""A `fast_dev_run` of every shipped embedded config (one train + one validation batch), with tiny backbones and a
tiny synthetic set swapped in by the same CLI overrides a user would type; stage 2 logs accuracy per question type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import TINY_LLM, TINY_VIT

from vrp.cli import cli

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "experiments" / "embedded").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    from data_modules.synthetic import generate
    from vrp.training.tiny_backbones import prepare

    root = tmp_path_factory.mktemp("embedded_configs")
    generate(root / "data", videos=30, seed=0, workers=1, size=64)
    prepare(
        str(root / "data" / "tokenizer"),
        root / "backbones",
        seed=0,
        vit={**TINY_VIT, "image_size": 64},
        llm={**TINY_LLM, "max_position_embeddings": 512},
    )  # captions + 40 track tokens
    return root


def _overrides(root: Path, config: Path) -> list[str]:
    data = root / "data"
    model = "--model.init_args.model.init_args"
    args = [
        f"{model}.vision.init_args.model_name_or_path={root / 'backbones' / 'vit'}",
        f"{model}.llm.init_args.model_name_or_path={root / 'backbones' / 'llm'}",
        f"--data.init_args.synthetic_root={data}",
        "--data.init_args.generate_if_missing=false",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--trainer.fast_dev_run=true",
        "--data.init_args.feature_cache=null",  # decode: the cached path has its own test (test_cache.py)
        f"--trainer.default_root_dir={root / 'runs' / config.stem}",
    ]
    if "InstructionTuning" in config.read_text():  # a 30-video set leaves val with few balanced items: use train's
        args += [
            "--model.init_args.init_from=null",
            "--results.dir=null",
            "--data.init_args.val="
            + json.dumps(
                {
                    "class_path": "data_modules.sources.MultipleChoice",
                    "init_args": {
                        "path": str(data / "train" / "mc.csv"),
                        "template": "<video>\n{question}",
                        "target": "text",
                        "boxes": str(data / "train" / "boxes.json"),
                    },
                }
            ),
        ]
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_fast_dev_run_of_each_embedded_config(tiny_synthetic, config):
    run = cli(["fit", "--config", str(config), *_overrides(tiny_synthetic, config)])
    metrics = run.trainer.callback_metrics
    assert run.trainer.global_step == 1
    if "InstructionTuning" in config.read_text():
        assert "val/loss" in metrics and "val/acc" in metrics
        assert any(k.startswith("val/acc_") for k in metrics)  # per question type
        assert 0.0 <= float(metrics["val/acc"]) <= 100.0


def test_vrp_test_of_the_embedded_finetune_config_prints_and_writes_the_table(tiny_synthetic, capsys):
    """`vrp test --config experiments/embedded/finetune.yaml`: the per-type table (with the config's blind column)
    is printed and written to `<root>/test/version_N/test_results.{json,md}` by the results callback."""
    config = ROOT / "experiments" / "embedded" / "finetune.yaml"
    args = [a for a in _overrides(tiny_synthetic, config) if a != "--trainer.fast_dev_run=true"]
    args += [
        a.replace("--data.init_args.val=", "--data.init_args.test=")
        for a in args
        if a.startswith("--data.init_args.val=")
    ]  # train's questions, as for validation above
    meta = tiny_synthetic / "blind_meta.json"  # a 30-video set fits no text prior: give the column one
    meta.write_text(json.dumps({"baselines": {"test": {"descriptive": {"best_text_prior": 0.25}}}}))
    cli(["test", "--config", str(config), *args, "--trainer.limit_test_batches=2", f"--results.blind_baseline={meta}"])
    folder = tiny_synthetic / "runs" / "finetune" / "test" / "version_0"
    table = json.loads((folder / "test_results.json").read_text())
    assert table["counts"]["overall"] == len(table["rows"]) > 0
    out = capsys.readouterr().out
    assert "| question type | n | accuracy (%) | chance (%) | blind (%) |" in out
    assert (folder / "test_results.md").read_text() in out
