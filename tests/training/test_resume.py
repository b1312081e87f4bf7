"""SIGKILL mid-epoch, resume with `--ckpt_path last`: the following steps' losses equal an uninterrupted run's, bit for bit.

Runs the real CLI, the real InstructionDataModule (StatefulDataLoader, 2 workers) on a tiny synthetic set, tiny
saved backbones and a Q-Former with dropout, so RNG, optimizer, scheduler and dataloader state all matter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_assets import TINY_LLM, TINY_QFORMER, TINY_VIT, frame_qformer, reasoner, stage_config, synthetic_data

STEPS, CKPT_EVERY, KILL_AFTER = 10, 4, 6


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from lab.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, videos=40, seed=0, workers=1)
    from lab.prepare import save_random_backbones

    save_random_backbones(str(root / "tokenizer"), root / "backbones", seed=0, vit=TINY_VIT, llm=TINY_LLM)
    return root


PACKING = {"packed": {"max_tokens": 96}, "budget": {"max_tokens": 96, "rows": 2}}  # data_modules.packing


def _config(root: Path, run: Path, packing: str | None = None) -> Path:
    """The embedded stage 2 at tiny size with a Q-Former and LoRA, both with dropout, and 2 loader workers."""
    checkpoint = {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0, "every_n_train_steps": CKPT_EVERY}
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint},
        {"class_path": "vrp.training.StepLossLog", "init_args": {"path": str(run / "losses.jsonl")}},
    ]
    if packing:  # prints the run's mean samples per step
        progress = {"class_path": "vrp.training.ProgressLog", "init_args": {"every_n_steps": STEPS, "when": "always"}}
        callbacks.append(progress)
    fusion = frame_qformer(replace(TINY_QFORMER, num_query_tokens=4, dropout=0.1))
    model = {"fusion": fusion, "objects": None, "llm": {"init_args": {"lora_dropout": 0.1}}, "llm_mode": "lora"}
    # tiny sets leave val/test without balanced MC items; validation is off anyway
    val = {"class_path": "data_modules.sources.MultipleChoice", "init_args": {"path": str(root / "train" / "mc.csv")}}
    # packed rows of at most 96 LLM tokens; "budget": batches of 2 such rows, not of batch_size
    data = {"num_workers": 2, "seed": 0, "val": val, "packing": PACKING[packing] if packing else None}
    overlay = {
        "seed_everything": 3,
        "trainer": {"max_steps": STEPS, "logger": False, "callbacks": callbacks},
        "model": {"init_args": {"warmup_steps": 2}},
        "data": {"init_args": data},
    }
    return stage_config(run, root / "backbones", synthetic_data(root), overlay, reasoner(model))


def _cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vrp", "fit", "--config", str(config), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}


def _losses(path: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory) -> dict[int, float]:
    """The per-step losses of the uninterrupted run."""
    run = tmp_path_factory.mktemp("full")
    proc = subprocess.run(_cmd(_config(synthetic_root, run)), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(run / "losses.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _start_and_wait(config: Path, log: Path, step: int, *extra: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """A `vrp fit` child, returned once its loss log holds ``step``."""
    child = subprocess.Popen(_cmd(config, *extra), env=_env(), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None:
        if log.is_file() and max(_losses(log), default=0) >= step:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be stopped"
    return child


def _resume_matches(config: Path, log: Path, resumed_from: int, reference: dict[int, float]) -> None:
    log.unlink()
    proc = subprocess.run(_cmd(config, "--ckpt_path", "last"), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _losses(log)
    assert sorted(resumed) == list(range(resumed_from + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == reference[step], (step, loss, reference[step])  # bit-exact on CPU


@pytest.mark.parametrize("packing", [None, "packed", "budget"], ids=["padded", "packed", "budget"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(synthetic_root, reference, tmp_path, packing):
    if packing:  # the packed run's own uninterrupted losses
        proc = subprocess.run(
            _cmd(_config(synthetic_root, tmp_path / "full", packing=packing)),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        reference = _losses(tmp_path / "full" / "losses.jsonl")
        assert sorted(reference) == list(range(1, STEPS + 1))
        mean = float(re.search(r"\[train-summary\] 10 optimizer steps, mean ([\d.]+) samples/step", proc.stdout)[1])
        assert mean > 4 if packing == "budget" else mean == 4  # the budget fits more than batch_size short samples
    cut_run = tmp_path / "cut"
    config = _config(synthetic_root, cut_run, packing)
    log = cut_run / "losses.jsonl"
    child = _start_and_wait(config, log, KILL_AFTER)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = max(_losses(log))
    assert killed_at < STEPS
    last = torch.load(cut_run / "ckpt" / "last.ckpt", weights_only=True)
    resumed_from = last["global_step"]
    assert 0 < resumed_from <= killed_at
    _resume_matches(config, log, resumed_from, reference)


@pytest.mark.parametrize(
    ("signum", "extra"),
    [(signal.SIGTERM, ()), (signal.SIGINT, ()), (signal.SIGUSR1, ("--signals.early_warning=SIGUSR1",))],
    ids=["SIGTERM", "SIGINT", "SIGUSR1"],
)
def test_a_signal_saves_the_step_reached_exits_nonzero_and_resumes_exactly(
    synthetic_root, reference, tmp_path, signum, extra
):
    """SIGTERM (a scheduler), SIGINT (Ctrl-C) or a configured early warning: the run saves the step it reached (not
    the last periodic checkpoint), says so in one line and exits 128 + the signal's number; resuming is exact."""
    cut_run = tmp_path / "cut"
    config = _config(synthetic_root, cut_run)
    log = cut_run / "losses.jsonl"
    child = _start_and_wait(config, log, 2, *extra, stderr=subprocess.PIPE)
    signalled_at = max(_losses(log))
    os.kill(child.pid, signum)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 128 + signum, err[-3000:]
    last = cut_run / "ckpt" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert signalled_at <= step < STEPS
    assert err.strip().splitlines()[-1] == (
        f"stopped by {signum.name} at step {step}; checkpoint {last}; resume with --ckpt_path last"
    )
    _resume_matches(config, log, step, reference)
