"""Run an ablation matrix on the embedded default and write the results table (Markdown + CSV).

    python -m lab ablate [--steps 1000] [--pretrain-steps 250] [--only fusion_mlp,llm_control] [--jobs 2]
                         [--overlays experiments/ablations] [--out runs/ablate] [-- --trainer.devices=2]

Each row is the embedded default plus one overlay from `--overlays` (the `baseline` row has none). A row runs stage 1
(`experiments/embedded/pretrain.yaml` + overlay, `--pretrain-steps` steps) and then stage 2
(`experiments/embedded/finetune.yaml` + overlay, `--steps` steps) initialised from that row's own stage-1 checkpoint,
so an overlay that changes the fusion module is pretrained with it. An overlay that sets `model.init_args.init_from`
(e.g. `skip_stage1.yaml`, the baselines) is a stage-2-only row. Every row is tested on the synthetic mc.csv test
split with the same scorer; `ci95_overall` is the 95% interval of the overall accuracy (binomial, over the test
questions). Each row's contribution is its difference from a reference row on the same questions (`delta_*`, in
points; `ci95_delta` is the paired 95% interval of the overall difference, `paired_difference`): the `baseline` row,
or for a stage-2-only row the `--stage2-reference` row (`skip_stage1`: the default without stage 1), so a fusion
swap that skips stage 1 is compared with the default trained the same way. `--jobs N` runs N rows at once, each
with 1/N of the CPU threads and its output in `<out>/<row>/log.txt` (on 2 cores, two 1-thread runs finish in less
time than two 2-thread runs one after the other: small models use a second thread poorly). A failed row is named
with its log and left out of the table, the other rows still make it; `--resume` reuses every row that finished
with the same steps and arguments (its `row.json`), so a rerun runs only what is missing. Extra arguments after
`--` go to every `vrp fit`.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from vrp.evaluation.results import interval95, paired_difference

ROOT = Path(__file__).resolve().parents[1]

PRETRAIN = ROOT / "experiments" / "embedded" / "pretrain.yaml"
FINETUNE = ROOT / "experiments" / "embedded" / "finetune.yaml"
QUIET = ["--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.limit_val_batches=0"]


def stage2_only(overlay: Path | None) -> bool:
    """Whether the overlay decides stage 2's initialisation itself (then no stage 1 runs for its row)."""
    if overlay is None:
        return False
    cfg = yaml.safe_load(overlay.read_text()) or {}
    return "init_from" in ((cfg.get("model") or {}).get("init_args") or {})


def call(cmd: list[str], log: Path | None, threads: int | None) -> None:
    """Run one `vrp` command from the repository root; with ``log``, its output goes to that file (appended)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    if log is None:
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)
        return
    with log.open("a") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[2:5])} ... failed (exit {done.returncode}); its output is in {log}")


def fit(
    stage: Path,
    overlay: Path | None,
    run_dir: Path,
    steps: int,
    extra: list[str],
    *more: str,
    log: Path | None = None,
    threads: int | None = None,
) -> Path:
    """`vrp fit` one stage; returns its last checkpoint (a re-run first clears the row's old checkpoints, else
    Lightning would save `last-v1.ckpt` beside the stale `last.ckpt` that the row then tests)."""
    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
    configs = ["--config", str(stage)] + (["--config", str(overlay)] if overlay else [])
    call(
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
        log,
        threads,
    )
    return run_dir / "ckpt" / "last.ckpt"


def run(
    name: str,
    overlay: Path | None,
    out: Path,
    steps: int,
    pretrain_steps: int,
    extra: list[str],
    *,
    quiet: bool = False,
    threads: int | None = None,
    resume: bool = False,
) -> dict:
    run_dir = out / name
    settings = {"steps": steps, "pretrain_steps": pretrain_steps, "extra": extra}
    done = run_dir / "row.json"
    if resume and done.is_file():
        earlier = json.loads(done.read_text())
        if earlier["settings"] == settings:
            print(f"ablate: row {name} reused from {done} (same steps and arguments)", flush=True)
            return earlier["row"]
    done.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.txt" if quiet else None
    if log is not None:
        log.write_text("")
    start = time.time()
    init = []
    stage1 = not stage2_only(overlay)
    if stage1:
        ckpt = fit(PRETRAIN, overlay, run_dir / "pretrain", pretrain_steps, extra, log=log, threads=threads)
        init = [f"--model.init_args.init_from={ckpt}"]
    stage2 = fit(FINETUNE, overlay, run_dir, steps, extra, *init, f"--results.dir={run_dir}", log=log, threads=threads)
    configs = ["--config", str(FINETUNE)] + (["--config", str(overlay)] if overlay else [])
    call(
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
        log,
        threads,
    )
    result = json.loads((run_dir / "test_results.json").read_text())
    overall, n = result["accuracy"]["overall"], result["counts"]["overall"]
    print(f"ablate: row {name} done in {(time.time() - start) / 60:.1f} min: overall {overall:.1f}", flush=True)
    row = {
        "ablation": name,
        "minutes": round((time.time() - start) / 60, 1),
        "stage1": stage1,
        **{f"acc_{k}": round(v, 1) for k, v in result["accuracy"].items()},
        "ci95_overall": round(interval95(overall, n), 1),
    }
    done.write_text(json.dumps({"settings": settings, "row": row}, indent=1))
    return row


def add_deltas(rows: list[dict], out: Path, stage2_reference: str) -> None:
    """Each row's difference from its reference row on the same test questions (in place): ``vs``, ``delta_<type>``
    and ``delta_overall`` with its paired 95% interval ``ci95_delta``. The reference is ``baseline``, or for a
    stage-2-only row ``stage2_reference`` when that row ran (else ``baseline``); rows without one get none."""
    ran = {r["ablation"] for r in rows}

    @functools.cache
    def questions(name: str) -> list[dict]:  # a reference row is read once, however many rows it serves
        return json.loads((out / name / "test_results.json").read_text())["rows"]

    for r in rows:
        own = not r["stage1"] and stage2_reference in ran and r["ablation"] != stage2_reference
        ref = stage2_reference if own else "baseline"
        if ref == r["ablation"] or ref not in ran:
            continue
        mine, theirs = questions(r["ablation"]), questions(ref)
        r["vs"] = ref
        delta, ci, _ = paired_difference(mine, theirs)
        r["delta_overall"], r["ci95_delta"] = round(delta, 1), round(ci, 1)
        for t in sorted({q["type"] for q in theirs}):
            r[f"delta_{t}"] = round(paired_difference([q for q in mine if q["type"] == t], theirs)[0], 1)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m lab ablate", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="stage-2 steps per row")
    p.add_argument("--pretrain-steps", type=int, default=250, help="stage-1 steps per row (the default's own)")
    p.add_argument("--jobs", type=int, default=1, help="rows run at once (each with 1/jobs of the CPU threads)")
    p.add_argument(
        "--stage2-reference", default="skip_stage1", help="the reference row of rows that skip stage 1 (if it runs)"
    )
    p.add_argument("--only", default="", help="comma-separated overlay names (default: baseline + all)")
    p.add_argument("--overlays", default="experiments/ablations", help="folder of overlay YAMLs, one row each")
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--no-baseline-row", action="store_true", help="only the overlays' rows")
    p.add_argument(
        "--resume", action="store_true", help="reuse rows that finished with the same steps and arguments (row.json)"
    )
    a = p.parse_args(argv)
    overlays = {o.stem: o for o in sorted((ROOT / a.overlays).glob("*.yaml"))}
    names = [n for n in a.only.split(",") if n] or ([] if a.no_baseline_row else ["baseline"]) + [*overlays]
    unknown = [n for n in names if n != "baseline" and n not in overlays]
    if unknown:
        raise SystemExit(f"unknown ablation(s) {unknown}; choose from {['baseline', *overlays]}")
    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    if a.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {a.jobs}")
    threads = max(1, (os.cpu_count() or 1) // a.jobs) if a.jobs > 1 else None
    kw = dict(quiet=a.jobs > 1, threads=threads, resume=a.resume)
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run, n, overlays.get(n), out, a.steps, a.pretrain_steps, extra, **kw) for n in names]
    rows, failed = [], []
    for name, future in zip(names, futures):  # a failed row is reported; the others still make the table
        try:
            rows.append(future.result())
        except (subprocess.CalledProcessError, SystemExit) as e:
            failed.append(name)
            print(f"ablate: row {name} failed: {e}", flush=True)
    add_deltas(rows, out, a.stage2_reference)
    order = ["ablation", "minutes", "stage1", "acc_overall", "ci95_overall", "vs", "delta_overall", "ci95_delta"]
    cols = sorted({k for r in rows for k in r}, key=lambda k: (order.index(k) if k in order else len(order), k))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten to {out}/results.md and results.csv")
    if failed:
        raise SystemExit(
            f"ablate: {len(failed)} row(s) failed ({', '.join(failed)}) and are not in the table; fix them and rerun "
            "with --resume to run only those"
        )
