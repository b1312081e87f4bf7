"""Run an ablation matrix on the embedded default and write the results table (Markdown + CSV).

    python scripts/ablate.py [--steps 150] [--pretrain-steps 100] [--only fusion_mlp,llm_frozen]
                             [--overlays experiments/ablations] [--out runs/ablate] [-- --trainer.devices=2]

Each row is the embedded default plus one overlay from `--overlays` (the `baseline` row has none). A row runs stage 1
(`experiments/embedded/pretrain.yaml` + overlay, `--pretrain-steps` steps) and then stage 2
(`experiments/embedded/finetune.yaml` + overlay, `--steps` steps) initialised from that row's own stage-1 checkpoint,
so an overlay that changes the fusion module is pretrained with it. An overlay that sets `model.init_args.init_from`
(e.g. `skip_stage1.yaml`, the baselines) is a stage-2-only row. Every row is tested on the synthetic mc.csv test
split with the same scorer; `ci95_overall` is the 95% interval of the overall accuracy (binomial, over the test
questions), so two rows whose difference is within both intervals are not told apart. Extra arguments after `--`
go to every `vrp fit`.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vrp.evaluation.results import interval95  # noqa: E402

PRETRAIN = ROOT / "experiments" / "embedded" / "pretrain.yaml"
FINETUNE = ROOT / "experiments" / "embedded" / "finetune.yaml"
QUIET = ["--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.limit_val_batches=0"]


def stage2_only(overlay: Path | None) -> bool:
    """Whether the overlay decides stage 2's initialisation itself (then no stage 1 runs for its row)."""
    if overlay is None:
        return False
    cfg = yaml.safe_load(overlay.read_text()) or {}
    return "init_from" in ((cfg.get("model") or {}).get("init_args") or {})


def fit(stage: Path, overlay: Path | None, run_dir: Path, steps: int, extra: list[str], *more: str) -> Path:
    """`vrp fit` one stage; returns its last checkpoint (a re-run first clears the row's old checkpoints, else
    Lightning would save `last-v1.ckpt` beside the stale `last.ckpt` that the row then tests)."""
    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
    configs = ["--config", str(stage)] + (["--config", str(overlay)] if overlay else [])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vrp",
            "fit",
            *configs,
            *QUIET,
            *more,
            f"--trainer.default_root_dir={run_dir}",
            f"--trainer.max_steps={steps}",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={run_dir}/ckpt",
            "--trainer.callbacks.save_last=true",
            *extra,
        ],
        cwd=ROOT,
        check=True,
    )
    return run_dir / "ckpt" / "last.ckpt"


def run(name: str, overlay: Path | None, out: Path, steps: int, pretrain_steps: int, extra: list[str]) -> dict:
    run_dir = out / name
    start = time.time()
    init = []
    if not stage2_only(overlay):
        stage1 = fit(PRETRAIN, overlay, run_dir / "pretrain", pretrain_steps, extra)
        init = [f"--model.init_args.init_from={stage1}"]
    stage2 = fit(FINETUNE, overlay, run_dir, steps, extra, *init, f"--results.dir={run_dir}")
    configs = ["--config", str(FINETUNE)] + (["--config", str(overlay)] if overlay else [])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vrp",
            "test",
            *configs,
            *QUIET,
            *init,
            f"--trainer.default_root_dir={run_dir}",
            f"--results.dir={run_dir}",
            "--ckpt_path",
            str(stage2),
        ],
        cwd=ROOT,
        check=True,
    )
    result = json.loads((run_dir / "test_results.json").read_text())
    overall, n = result["accuracy"]["overall"], result["counts"]["overall"]
    return {
        "ablation": name,
        "minutes": round((time.time() - start) / 60, 1),
        **{f"acc_{k}": round(v, 1) for k, v in result["accuracy"].items()},
        "ci95_overall": round(interval95(overall, n), 1),
    }


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150, help="stage-2 steps per row")
    p.add_argument("--pretrain-steps", type=int, default=100, help="stage-1 steps per row")
    p.add_argument("--only", default="", help="comma-separated overlay names (default: baseline + all)")
    p.add_argument("--overlays", default="experiments/ablations", help="folder of overlay YAMLs, one row each")
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--no-baseline-row", action="store_true", help="only the overlays' rows")
    a = p.parse_args(argv)
    overlays = {o.stem: o for o in sorted((ROOT / a.overlays).glob("*.yaml"))}
    names = [n for n in a.only.split(",") if n] or ([] if a.no_baseline_row else ["baseline"]) + [*overlays]
    unknown = [n for n in names if n != "baseline" and n not in overlays]
    if unknown:
        raise SystemExit(f"unknown ablation(s) {unknown}; choose from {['baseline', *overlays]}")
    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [run(n, overlays.get(n), out, a.steps, a.pretrain_steps, extra) for n in names]
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k != "ablation", k != "minutes", k))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten to {out}/results.md and results.csv")


if __name__ == "__main__":
    main()
