"""scripts/ablate.py: a re-run row must not test a stale checkpoint left by an earlier run."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fit_clears_the_rows_old_checkpoints(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("ablate", ROOT / "scripts" / "ablate.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    calls = []
    monkeypatch.setattr(ablate.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    (tmp_path / "row" / "ckpt").mkdir(parents=True)
    (tmp_path / "row" / "ckpt" / "last.ckpt").write_text("stale")
    path = ablate.fit(ablate.FINETUNE, None, tmp_path / "row", 7, [])
    assert path == tmp_path / "row" / "ckpt" / "last.ckpt" and not path.exists()
    assert "--trainer.max_steps=7" in calls[0]


def test_evidence_table_side_by_side_with_intervals(tmp_path, capsys):
    import json

    from vrp.evaluation.results import interval95

    assert interval95(50.0, 100) == 9.8 and interval95(100.0, 10) == 0.0
    spec = importlib.util.spec_from_file_location("evidence", ROOT / "scripts" / "evidence.py")
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    for name, acc in (("a", 60.0), ("b", 30.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_results.json").write_text(
            json.dumps(
                {
                    "accuracy": {"temporal": acc, "overall": acc},
                    "chance": {"temporal": 20.0, "overall": 21.0},
                    "counts": {"temporal": 100, "overall": 100},
                }
            )
        )
    evidence.main(["--results", f"test={tmp_path / 'a'}", "--results", f"fresh={tmp_path / 'b'}"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| temporal"))
    assert "60.0 ± 9.6" in row and "+40.0 ✓" in row and "30.0 ± 9.0" in row and "+10.0 |" in row
    import pytest

    with pytest.raises(SystemExit, match="test_results.json"):
        evidence.main(["--results", f"x={tmp_path / 'missing'}"])
