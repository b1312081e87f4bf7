"""Run the ablation matrix on the embedded default and write the results table (Markdown + CSV).

    python scripts/ablate.py [--steps 150] [--only fusion_mlp,llm_frozen] [--out runs/ablate]

Each row is `experiments/embedded/finetune.yaml` + one overlay from `experiments/ablations/` (the baseline row has
none), fine-tuned for `--steps` steps from the stage-1 checkpoint (unless the overlay skips it), then tested on the
synthetic mc.csv test split. Extra arguments after `--` go to every `vrp fit` (e.g. `-- --trainer.devices=2`).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "experiments" / "embedded" / "finetune.yaml"


def run(name: str, overlay: Path | None, out: Path, steps: int, extra: list[str]) -> dict:
    run_dir = out / name
    common = ["--config", str(STAGE)] + (["--config", str(overlay)] if overlay else []) + [
        f"--trainer.default_root_dir={run_dir}", f"--trainer.max_steps={steps}", "--trainer.logger=false",
        "--trainer.callbacks=[]", f"--model.init_args.results_dir={run_dir}",
        "--trainer.limit_val_batches=0"]
    start = time.time()
    # fit then test in one process would need the Python API; two CLI calls keep it the same code path users run
    fit = [sys.executable, "-m", "vrp", "fit", *common,
           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
           f"--trainer.callbacks.dirpath={run_dir}/ckpt", "--trainer.callbacks.save_last=true", *extra]
    subprocess.run(fit, cwd=ROOT, check=True)
    test = [sys.executable, "-m", "vrp", "test", *common, "--ckpt_path", f"{run_dir}/ckpt/last.ckpt"]
    subprocess.run(test, cwd=ROOT, check=True)
    result = json.loads((run_dir / "test_results.json").read_text())
    return {"ablation": name, "minutes": round((time.time() - start) / 60, 1), **{
        f"acc_{k}": round(v, 1) for k, v in result["accuracy"].items()}}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--only", default="", help="comma-separated overlay names (default: all + baseline)")
    p.add_argument("--out", default="runs/ablate")
    a = p.parse_args(argv)
    overlays = {o.stem: o for o in sorted((ROOT / "experiments" / "ablations").glob("*.yaml"))}
    names = [n for n in a.only.split(",") if n] or ["baseline", *overlays]
    unknown = [n for n in names if n != "baseline" and n not in overlays]
    if unknown:
        raise SystemExit(f"unknown ablation(s) {unknown}; choose from {['baseline', *overlays]}")
    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [run(n, overlays.get(n), out, a.steps, extra) for n in names]
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
