"""NaN/Inf: a non-finite loss or gradient stops `vrp fit` with one line naming the step and the batch's keys (or
skips the step, counted, with `--nonfinite.policy=skip`); `vrp test`, `vrp export` and `vrp ask` refuse
non-finite weights."""

from __future__ import annotations

import pytest
import torch
from tiny_assets import run_main, toy_config

from vrp.evaluation import inference
from vrp.training import export

NAN_BATCH = "--data.init_args.nan_samples=[5]"  # sample 5 is in the second batch of 4 (toy_0004 .. toy_0007)


def test_a_nan_loss_stops_the_run_naming_step_and_keys(tiny_root, tmp_path, capsys):
    config = toy_config(tiny_root, tmp_path / "run")
    assert run_main(["fit", "--config", str(config), NAN_BATCH]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: step 2: loss nan, non-finite gradients in 27 of 27 tensors (first model.fusion.mlp.0.weight); "
        "batch keys: toy_0004, toy_0005, toy_0006, toy_0007. Lower the learning rate, check these samples, or set "
        "--nonfinite.policy=skip"
    )


def test_skip_policy_counts_and_keeps_the_weights_finite(tiny_root, tmp_path):
    run = tmp_path / "run"
    config = toy_config(tiny_root, run)
    assert run_main(["fit", "--config", str(config), NAN_BATCH, "--nonfinite.policy=skip"]) == 0
    ckpt = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and all(v.isfinite().all() for v in ckpt["state_dict"].values())
    guard = next(v for k, v in ckpt["callbacks"].items() if "NonFiniteGuard" in k)
    assert guard == {"skipped": 1}
    assert "train/nonfinite_skipped" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_test_export_and_ask_refuse_non_finite_weights(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    config = toy_config(tiny_root, run)
    assert run_main(["fit", "--config", str(config)]) == 0
    ckpt = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
    name = sorted(ckpt["state_dict"])[0]
    exported = export.export(run / "ckpt" / "last.ckpt", tmp_path / "export")  # finite: exports fine
    ckpt["state_dict"][name][0] = float("inf")
    torch.save(ckpt, tmp_path / "diverged.ckpt")
    capsys.readouterr()
    refusal = f"{len(ckpt['state_dict'])} weight tensors hold NaN or Inf (first {name})"
    assert run_main(["test", "--config", str(config), "--ckpt_path", str(tmp_path / "diverged.ckpt")]) == 2
    assert refusal in capsys.readouterr().err.strip().splitlines()[-1]
    assert run_main(["export", "--ckpt", str(tmp_path / "diverged.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert refusal in capsys.readouterr().err.strip().splitlines()[-1]
    from safetensors.torch import load_file, save_file

    weights = load_file(exported / "trainable.safetensors")
    weights[next(iter(weights))].fill_(float("nan"))
    save_file(weights, exported / "trainable.safetensors")
    with pytest.raises(inference.AskError, match="weight tensors hold NaN or Inf"):
        inference.load_model(str(exported))
