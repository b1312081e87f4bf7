"""lab.ablate and lab.evidence: a re-run row must not test a stale checkpoint left by an earlier run; the tables."""

from pathlib import Path

from lab import ablate, evidence


def test_fit_clears_the_rows_old_checkpoints(tmp_path, monkeypatch):
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


def _rows(correct: list[bool], types: list[str]) -> list[dict]:
    return [
        {"key": f"q{i}", "type": t, "prediction": 0 if ok else 1, "answer": 0, "num_options": 5}
        for i, (ok, t) in enumerate(zip(correct, types))
    ]


def test_paired_difference_by_hand():
    import math

    import pytest

    from vrp.evaluation.results import paired_difference

    ref = _rows([True, True, False, False, True], ["a"] * 5)
    new = _rows([True, False, True, True, True], ["a"] * 5)  # d = 0, -1, +1, +1, 0: mean 0.2, sd sqrt(0.7)
    delta, ci, n = paired_difference(new, ref)
    assert n == 5 and delta == pytest.approx(20.0) and ci == pytest.approx(196 * math.sqrt(0.7 / 5))
    assert paired_difference(new[:3], ref)[2] == 3  # only the keys both scored
    assert paired_difference(ref, ref)[:2] == (0.0, 0.0)
    with pytest.raises(ValueError, match="in common"):
        paired_difference(new, [{**r, "key": "other" + r["key"]} for r in ref])


def test_deltas_against_the_reference_trained_the_same_way(tmp_path):
    import json

    types = ["temporal", "temporal", "descriptive", "descriptive"]
    results = {
        "baseline": [True, True, True, False],
        "skip_stage1": [True, False, True, False],
        "fusion_mlp": [False, False, True, True],
        "vfm_random": [True, False, True, False],
    }
    for name, correct in results.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_results.json").write_text(json.dumps({"rows": _rows(correct, types)}))
    rows = [
        {"ablation": "baseline", "stage1": True},
        {"ablation": "skip_stage1", "stage1": False},
        {"ablation": "fusion_mlp", "stage1": False},
        {"ablation": "vfm_random", "stage1": True},
    ]
    ablate.add_deltas(rows, tmp_path, "skip_stage1")
    base, skip, mlp, vfm = rows
    assert "vs" not in base
    assert skip["vs"] == "baseline" and skip["delta_overall"] == -25.0 and skip["delta_temporal"] == -50.0
    assert mlp["vs"] == "skip_stage1" and mlp["delta_overall"] == 0.0 and mlp["delta_descriptive"] == 50.0
    assert vfm["vs"] == "baseline" and vfm["delta_temporal"] == -50.0 and vfm["ci95_delta"] > 0
    rows = [{"ablation": "fusion_mlp", "stage1": False}, {"ablation": "baseline", "stage1": True}]
    ablate.add_deltas(rows, tmp_path, "skip_stage1")  # its stage-2 reference did not run: the baseline instead
    assert rows[0]["vs"] == "baseline" and rows[0]["delta_overall"] == -25.0


def test_a_quiet_row_writes_its_log_and_names_it_when_it_fails(tmp_path, monkeypatch):
    import subprocess

    import pytest

    seen = {}

    def fake(cmd, **kw):
        seen.update(kw)
        kw["stdout"].write("boom\n")
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(ablate.subprocess, "run", fake)
    log = tmp_path / "log.txt"
    with pytest.raises(SystemExit, match=f"exit 3.*{log}"):
        ablate.fit(ablate.FINETUNE, None, tmp_path / "row", 7, [], log=log, threads=1)
    assert seen["env"]["OMP_NUM_THREADS"] == "1" and log.read_text() == "boom\n"


def test_a_failed_row_leaves_the_others_in_the_table_and_resume_reruns_only_it(tmp_path, monkeypatch):
    import json

    import pytest

    (tmp_path / "overlays").mkdir()
    for name in ("good", "bad"):
        (tmp_path / "overlays" / f"{name}.yaml").write_text("model: {init_args: {lr: 1.0e-3}}\n")
    trained = []

    def fake_fit(stage, overlay, run_dir, steps, extra, *more, log=None, threads=None):
        row = run_dir.parent.name if stage == ablate.PRETRAIN else run_dir.name  # stage 1 runs in <row>/pretrain
        trained.append((row, stage.name))
        if row == "bad" and not (tmp_path / "fixed").exists():
            raise SystemExit(f"vrp fit ... failed (exit 1); its output is in {log}")
        return run_dir / "ckpt" / "last.ckpt"

    def fake_call(cmd, log, threads):  # `vrp test`: a results file, one of two questions right
        run_dir = Path(next(c for c in cmd if c.startswith("--results.dir=")).split("=", 1)[1])
        rows = _rows([True, False], ["temporal", "temporal"])
        result = {"accuracy": {"overall": 50.0, "temporal": 50.0}, "counts": {"overall": 2}, "rows": rows}
        (run_dir / "test_results.json").write_text(json.dumps(result))

    monkeypatch.setattr(ablate, "fit", fake_fit)
    monkeypatch.setattr(ablate, "call", fake_call)
    args = ["ablate.py", "--overlays", str(tmp_path / "overlays"), "--out", str(tmp_path / "out"), "--steps", "5"]
    monkeypatch.setattr(ablate.sys, "argv", args)
    with pytest.raises(SystemExit, match=r"1 row\(s\) failed \(bad\)"):
        ablate.main()
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| baseline |" in table and "| good |" in table and "| bad |" not in table
    (tmp_path / "fixed").touch()
    trained.clear()
    monkeypatch.setattr(ablate.sys, "argv", args + ["--resume"])
    ablate.main()
    assert {name for name, _ in trained} == {"bad"}, "finished rows with the same settings are reused"
    assert "| bad |" in (tmp_path / "out" / "results.md").read_text()
    trained.clear()
    monkeypatch.setattr(ablate.sys, "argv", args[:-1] + ["6", "--resume"])
    ablate.main()
    assert {name for name, _ in trained} == {"baseline", "good", "bad"}, "other steps: nothing is reused"
