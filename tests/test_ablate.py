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
