"""`python -m lab <command>`: one entry point for the lab's commands, each reading its own flags."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiny_assets import word_tokenizer

from lab.__main__ import COMMANDS, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert (
        all(name in out for name in ("data", "prepare", "probe", "ablate", "evidence", "narrate"))
        and len(COMMANDS) == 6
    )


@pytest.mark.parametrize("command", ["data", "prepare", "probe", "ablate", "evidence"])
def test_each_command_reads_its_own_flags(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: python -m lab {command}")


def test_an_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2 and "frobnicate" in capsys.readouterr().err


def test_python_dash_m_lab_prepare_builds_the_backbones(tmp_path):
    tok = tmp_path / "tok"
    word_tokenizer().save_pretrained(tok)
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "prepare", "--tokenizer", str(tok), "--out", str(tmp_path / "emb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "emb" / "vit" / "config.json").is_file() and (tmp_path / "emb" / "llm" / "config.json").is_file()


def test_vrp_has_no_prepare_tool():
    from vrp.cli import TOOLS

    assert "prepare" not in TOOLS
