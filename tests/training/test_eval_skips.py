"""A question whose video cannot be read at evaluation is skipped, counted and reported beside the table: never
replaced by the next record (which would score that one twice and change the denominator)."""

from __future__ import annotations

import json

import yaml
from tiny_assets import mc_data, toy_config

from vrp.cli import cli


def test_missing_video_at_test_is_skipped_and_reported(tiny_root, tmp_path):
    run = tmp_path / "run"
    config = toy_config(tiny_root, run)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"] = mc_data(tmp_path / "mc", missing="clip1")
    cfg["data"]["init_args"]["tokenizer"] = str(tiny_root / "tokenizer")
    config.write_text(yaml.safe_dump(cfg))
    cli(["test", "--config", str(config)])
    result = json.loads((run / "test" / "version_0" / "test_results.json").read_text())
    keys = [r["key"] for r in result["rows"]]
    assert sorted(keys) == ["clip0_q0", "clip2_q2", "clip3_q3"]  # each once; clip1 neither scored nor replaced
    assert result["counts"]["overall"] == 3
    assert result["skipped"] == [{"key": "clip1_q1", "reason": "missing_file"}]
    md = (run / "test" / "version_0" / "test_results.md").read_text()
    assert "Skipped 1 question(s) whose sample could not be read (missing_file 1); not counted above." in md
