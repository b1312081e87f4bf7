"""Frozen-feature cache: run the frozen vision encoder once over a dataset, store each clip's visual tokens in
safetensors shards, and feed training from them instead of pixels.

    vrp cache --config experiments/embedded/finetune.yaml --out artifacts/cache/finetune-train [--split train]

<out>/index.json                 {"keys": {key: shard}, "vision": <vision config>, "num_frames", "tokens", "width"}
<out>/shard-000000.safetensors   "<key>.visual" (T, N, D) float16, "<key>.frame_mask" (T,) bool

Training reads it through the stage modules' `feature_cache: <out>` argument: batches whose keys are all cached
get `visual`/`frame_mask` from the cache and skip the vision encoder (the frozen VFM must be the one the cache was
built with; the index records its config and the module checks it). The cache holds ONE deterministic view per clip
(the datamodule's eval sampling, no crop augmentation): the usual trade-off of feature caching.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


def write_cache(vision: nn.Module, batches: Iterable[dict], out: str | Path, *, shard_size: int = 256,
                dtype: torch.dtype = torch.float16, meta: dict | None = None) -> int:
    """Encode every batch (`keys`, `video`, `frame_mask`) with `vision` and write shards + index; returns clips."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}
    shape = None

    def flush() -> None:
        if pending:
            name = f"shard-{len(set(index.values())):06d}.safetensors"
            save_file(dict(pending), str(out / f".{name}.tmp"))
            (out / f".{name}.tmp").replace(out / name)
            for k in {k.rsplit(".", 1)[0] for k in pending}:
                index[k] = name
            pending.clear()

    device = next(vision.parameters()).device
    with torch.no_grad():
        for batch in batches:
            visual = vision(batch["video"].to(device)).to("cpu", dtype)  # (B, T, N, D)
            shape = tuple(visual.shape[1:])
            for key, v, m in zip(batch["keys"], visual, batch["frame_mask"].cpu()):
                if key in index or f"{key}.visual" in pending:
                    continue
                pending[f"{key}.visual"], pending[f"{key}.frame_mask"] = v.contiguous(), m.contiguous()
                if len(pending) >= 2 * shard_size:
                    flush()
    flush()
    if shape is None:
        raise ValueError("no batches to cache")
    info = {"keys": index, "num_frames": shape[0], "tokens": shape[1], "width": shape[2], "vision": meta or {}}
    (out / "index.json").write_text(json.dumps(info))
    return len(index)


class FeatureCache:
    """Read side: `get(keys)` -> (visual (B, T, N, D), frame_mask (B, T)); `covers(keys)` says whether all are in."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "index.json").is_file():
            raise FileNotFoundError(f"{self.root}/index.json missing: build the cache with `vrp cache` first")
        self.info = json.loads((self.root / "index.json").read_text())
        self.keys: dict[str, str] = self.info["keys"]
        self._files: dict[str, object] = {}

    def covers(self, keys: list[str]) -> bool:
        return all(k in self.keys for k in keys)

    def _file(self, shard: str):
        if shard not in self._files:
            self._files[shard] = safe_open(str(self.root / shard), framework="pt")
        return self._files[shard]

    def get(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise KeyError(f"{len(missing)} keys not in the feature cache {self.root} (e.g. {missing[:3]})")
        files = [self._file(self.keys[k]) for k in keys]
        visual = torch.stack([f.get_tensor(f"{k}.visual") for f, k in zip(files, keys)])
        mask = torch.stack([f.get_tensor(f"{k}.frame_mask") for f, k in zip(files, keys)])
        return visual, mask


def vision_meta(config: dict | None) -> dict:
    """The part of a VideoReasoner config that identifies the frozen features (vision encoder class + args)."""
    return dict((config or {}).get("init_args", {}).get("vision") or {})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vrp cache", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="stage YAML(s), as for `vrp fit`")
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--shard-size", type=int, default=256)
    a = p.parse_args(argv)
    from vrp.cli import VRPCLI

    args = [x for c in a.config for x in ("--config", c)] + ["--trainer.logger=false"]
    cli = VRPCLI(args=args + ["--model.init_args.init_from=null"] if "finetune" in " ".join(a.config) else args,
                 run=False)
    module, dm = cli.model, cli.datamodule
    vision = module.model.vision
    dm.configure_preprocess(vision.image_size, tuple(vision.mean), tuple(vision.std))
    if a.split == "train":  # one deterministic view per clip
        dm.train_sampling, dm.crop_scale = dm.eval_sampling, (1.0, 1.0)
    dm.prepare_data()
    dm.setup("fit" if a.split != "test" else "test")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[a.split]()
    meta = vision_meta(module.hparams.get("model") if hasattr(module, "hparams") else None)
    n = write_cache(vision, loader, a.out, shard_size=a.shard_size, meta=meta)
    print(f"cached {n} clips to {a.out}")
