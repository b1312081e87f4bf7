"""`init_from` (stage 2 starts from stage 1's weights) is read by a fresh `vrp fit` only: test, predict and a resumed
fit take every weight from their `--ckpt_path`, so they run with the stage-1 checkpoint moved away."""

from __future__ import annotations

import json
import logging
import shutil

import torch
import yaml
from tiny_assets import mc_data, run_main, toy_config


def _init_from(checkpoint) -> dict:
    return {"model": {"init_args": {"init_from": str(checkpoint)}}}


def test_init_from_is_read_by_a_fresh_fit_only(tiny_root, tmp_path, capsys, caplog):
    assert run_main(["fit", "--config", str(toy_config(tiny_root, tmp_path / "stage1"))]) == 0
    init = tmp_path / "stage1.ckpt"
    shutil.copy(tmp_path / "stage1" / "ckpt" / "last.ckpt", init)
    config = toy_config(tiny_root, tmp_path / "stage2", _init_from(init))
    with caplog.at_level(logging.INFO):
        assert run_main(["fit", "--config", str(config), "--trainer.max_steps=1"]) == 0
    assert f"loaded 27 weights from {init};" in caplog.text
    finetuned = tmp_path / "stage2" / "ckpt" / "last.ckpt"
    init.rename(tmp_path / "moved.ckpt")  # the stage-1 checkpoint is gone

    assert run_main(["test", "--config", str(config), "--ckpt_path", str(finetuned)]) == 0
    table = json.loads(next((tmp_path / "stage2" / "test").glob("version_*/test_results.json")).read_text())
    assert table["counts"]["overall"] == 8

    cfg = yaml.safe_load(config.read_text())
    cfg["data"] = mc_data(tmp_path / "mc", missing="")
    cfg["data"]["init_args"]["tokenizer"] = str(tiny_root / "tokenizer")
    config.write_text(yaml.safe_dump(cfg))
    assert run_main(["predict", "--config", str(config), "--ckpt_path", str(finetuned)]) == 0
    rows = (tmp_path / "stage2" / "predict" / "version_0" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all("choice" in json.loads(r) for r in rows)

    assert run_main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps=2"]) == 0
    assert torch.load(finetuned, weights_only=True)["global_step"] == 2  # resumed from step 1, without init_from

    fresh = toy_config(tiny_root, tmp_path / "fresh", _init_from(init))
    capsys.readouterr()
    assert run_main(["fit", "--config", str(fresh)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: init_from {init} does not exist: train stage 1 first (make pretrain), or set "
        "model.init_args.init_from: null to start stage 2 from scratch"
    )


def test_frozen_stage1_weights_are_kept_in_stage2_checkpoints(tiny_root, tmp_path):
    """A weight stage 1 gave that stage 2 keeps frozen is in stage 2's checkpoint, which then needs no init_from."""
    assert run_main(["fit", "--config", str(toy_config(tiny_root, tmp_path / "stage1"))]) == 0
    init = tmp_path / "stage1" / "ckpt" / "last.ckpt"
    config = toy_config(tiny_root, tmp_path / "stage2", _init_from(init))
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["model"]["init_args"]["fusion_mode"] = "frozen"
    config.write_text(yaml.safe_dump(cfg))
    assert run_main(["fit", "--config", str(config), "--trainer.max_steps=1"]) == 0
    stage1 = torch.load(init, weights_only=True)["state_dict"]
    stage2 = torch.load(tmp_path / "stage2" / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    fusion = sorted(k for k in stage1 if k.startswith("model.fusion."))
    assert fusion and all(torch.equal(stage2[k], stage1[k]) for k in fusion)
