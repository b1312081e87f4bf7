"""The `vrp` entry point: LightningCLI sub-commands and the tool dispatch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vrp.cli import main


def test_fit_help_lists_the_components(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--model", "--data", "--ckpt_path", "--seed_everything"):
        assert flag in out


def test_python_dash_m_vrp_dispatches_a_tool():
    proc = subprocess.run([sys.executable, "-m", "vrp", "export", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: vrp export"), proc.stderr[-2000:]


def test_unknown_subcommand_fails_cleanly():
    proc = subprocess.run([sys.executable, "-m", "vrp", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "frobnicate" in proc.stderr
