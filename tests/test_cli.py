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


def test_python_dash_m_vrp_and_prepare_tool(tmp_path):
    from tiny_assets import word_tokenizer

    tok = tmp_path / "tok"
    word_tokenizer().save_pretrained(tok)
    proc = subprocess.run(
        [sys.executable, "-m", "vrp", "prepare", "--tokenizer", str(tok), "--out", str(tmp_path / "emb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "emb" / "vit" / "config.json").is_file() and (tmp_path / "emb" / "llm" / "config.json").is_file()


def test_unknown_subcommand_fails_cleanly():
    proc = subprocess.run([sys.executable, "-m", "vrp", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "frobnicate" in proc.stderr
