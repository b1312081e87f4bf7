"""`python -m lab data --out DIR --videos N --seed S`: write the synthetic benchmark and print its blind baselines."""

from __future__ import annotations

import argparse
import time

from lab.synthetic.baselines import format_table
from lab.synthetic.writer import generate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab data", description=__doc__)
    p.add_argument("--out", required=True, help="output root, e.g. data/synthetic")
    p.add_argument("--videos", type=int, required=True, help="total videos, split 80/10/10 into train/val/test")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument(
        "--train-videos",
        type=int,
        default=None,
        help="train videos instead of 80%% (val and test stay as --videos makes them)",
    )
    p.add_argument("--size", type=int, default=128, help="square frame side in pixels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument("--max-frames", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=1024)
    a = p.parse_args(argv)
    start = time.perf_counter()
    meta = generate(
        a.out,
        a.videos,
        a.seed,
        size=a.size,
        workers=a.workers,
        min_frames=a.min_frames,
        max_frames=a.max_frames,
        vocab_size=a.vocab_size,
        train_videos=a.train_videos,
    )
    for split, counts in meta["counts"].items():
        print(f"{split}: {counts['videos']} videos, {counts['items']} questions {counts['per_type']}")
    for split, table in meta["baselines"].items():
        print(format_table(table, title=f"\nblind baselines on {split} (priors fitted on train)"))
    print(f"\nwrote {a.out} in {time.perf_counter() - start:.1f}s")
