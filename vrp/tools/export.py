"""`vrp export`: a trained checkpoint to a folder that inference loads without Lightning state
(`vrp.training.export.export`, which describes both formats).

    vrp export --ckpt runs/embedded/finetune/checkpoints/last.ckpt --out artifacts/model [--merge-lora]
    vrp export --ckpt runs/llava/checkpoints/last.ckpt --out artifacts/llava-hf --format hf
"""

from __future__ import annotations

import argparse
import sys

from vrp.models.io import CheckpointError
from vrp.training.export import export


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vrp export", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--merge-lora", action="store_true")
    p.add_argument("--format", choices=("vrp", "hf"), default="vrp", help="hf: the family's transformers folder")
    a = p.parse_args(argv)
    try:
        out = export(a.ckpt, a.out, merge_lora=a.merge_lora, format=a.format)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported to {out}")
