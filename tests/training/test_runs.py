"""Run folders (vrp.runs through the real CLI): `vrp test` never touches the training run's records and
honours what the user typed; two live runs never share a folder; a killed write's temp file is cleaned up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from tiny_assets import toy_config

from vrp.cli import cli
from vrp.runs import RunFolderBusy


def test_test_run_keeps_training_records_and_uses_typed_model_args(tiny_root, tmp_path):
    run = tmp_path / "run"
    config = toy_config(tiny_root, run)
    cli(["fit", "--config", str(config)])
    metrics, fit_config = (run / "csv" / "metrics.csv").read_text(), (run / "csv" / "config.yaml").read_text()
    assert len(metrics.splitlines()) >= 3
    ckpt = str(run / "ckpt" / "last.ckpt")
    typed = tmp_path / "typed_results"
    cli(["test", "--config", str(config), "--ckpt_path", ckpt, f"--results.dir={typed}"])
    assert (typed / "test_results.json").is_file() and (typed / "test_results.md").is_file()
    cli(["test", "--config", str(config), "--ckpt_path", ckpt])
    assert (run / "csv" / "metrics.csv").read_text() == metrics  # the training run's records are untouched
    assert (run / "csv" / "config.yaml").read_text() == fit_config
    assert not (run / "test_results.json").exists()
    assert (run / "test" / "version_0" / "csv" / "metrics.csv").is_file()  # each test run has its own folder
    assert (run / "test" / "version_1" / "test_results.json").is_file()


def test_a_folder_held_by_a_live_run_is_refused(tiny_root, tmp_path):
    run = tmp_path / "run"
    config = toy_config(tiny_root, run)
    holder = subprocess.Popen(  # another live run holding the folder, until its stdin closes
        [
            sys.executable,
            "-c",
            f"import sys; from vrp.runs import lock_folders; lock_folders([{str(run)!r}]);"
            " print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=re.escape(f"{run} is in use by another live run (pid {holder.pid} ")):
            cli(["fit", "--config", str(config)])
        assert not (run / "csv" / "metrics.csv").exists() and not (run / "ckpt" / "last.ckpt").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    cli(["fit", "--config", str(config)])  # the holder has ended: its lock went with it
    assert (run / "ckpt" / "last.ckpt").is_file()


def test_a_killed_checkpoint_write_is_cleaned_up_on_the_next_start(tiny_root, tmp_path):
    run = tmp_path / "run"
    config = toy_config(tiny_root, run)
    (run / "ckpt").mkdir(parents=True)
    stale = run / "ckpt" / ".last.ckpt.k3x9q1.tmp"  # what AtomicCheckpointIO leaves when killed mid-write
    stale.write_bytes(b"\0" * 1024)
    cli(["fit", "--config", str(config)])
    assert not stale.exists() and (run / "ckpt" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["last.ckpt"]  # nothing else (run/ holds the lock)
    assert (run / ".vrp-run.lock").is_file()


def test_two_process_test_run_shares_one_folder_and_scores_each_question_once(tiny_root, tmp_path):
    run = tmp_path / "run"
    config = toy_config(tiny_root, run)
    cli(["fit", "--config", str(config)])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vrp",
            "test",
            "--config",
            str(config),
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--ckpt_path",
            str(run / "ckpt" / "last.ckpt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "test").iterdir()) == ["version_0"]  # both ranks wrote into one folder
    result = json.loads((run / "test" / "version_0" / "test_results.json").read_text())
    assert sorted(r["key"] for r in result["rows"]) == [f"toy_{i:04d}" for i in range(8)]


def test_a_killed_run_frees_its_folder_even_while_its_forked_workers_live(tmp_path):
    from vrp.runs import lock_folders, release_folders

    script = (
        f"import os, sys, time; from vrp.runs import lock_folders; lock_folders([{str(tmp_path)!r}])\n"
        "child = os.fork()  # like a DataLoader worker: inherits every open file descriptor\n"
        "if child == 0:\n    sys.stdin.read(); os._exit(0)\n"
        "print(child, flush=True); time.sleep(600)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker = int(run.stdout.readline())
    try:
        with pytest.raises(RunFolderBusy):
            lock_folders([tmp_path])
        run.kill()  # SIGKILL; the forked worker is still alive
        run.wait(timeout=60)
        os.kill(worker, 0)  # raises if the worker were gone
        lock_folders([tmp_path])  # the lock went with the killed process, not with its worker
    finally:
        release_folders()
        run.stdin.close()  # the worker reads EOF and exits
