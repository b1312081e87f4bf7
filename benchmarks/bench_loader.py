"""Stage-1 loader throughput: read + decode + transform + collate from the synthetic shards, 0/1/2 workers.

Usage: python benchmarks/bench_loader.py [--root data/synthetic] [--batches 20]  (the data: `make data`)
"""

import argparse
import time
from pathlib import Path

import torch

from data_modules.datamodules import VideoTextDataModule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="data/synthetic")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--sampling", default="uniform", choices=["uniform", "segment", "fps"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'workers':>8} {'samples':>8} {'seconds':>8} {'samples/s':>10}")
    for workers in (0, 1, 2):
        dm = VideoTextDataModule(
            root=args.root,
            num_workers=workers,
            batch_size=args.batch_size,
            num_frames=args.frames,
            train_sampling=args.sampling,
        )
        dm.setup("fit")
        dm.configure_preprocess(args.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        n, it = 0, iter(dm.train_dataloader())
        next(it)  # worker start-up is not throughput
        t = time.perf_counter()
        for _, batch in zip(range(args.batches), it):
            n += batch["video"].shape[0]
        dt = time.perf_counter() - t
        print(f"{workers:>8} {n:>8} {dt:>8.2f} {n / dt:>10.1f}")
    print(f"skips: {dm.skip_counts()}  (root {Path(args.root).resolve()})")


if __name__ == "__main__":
    main()
