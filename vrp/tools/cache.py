"""`vrp cache`: run the frozen vision encoder once per VIDEO of each split and store its tokens
(`data_modules.features.FeatureStore`), so training and evaluation read tokens instead of decoding clips.

    vrp cache --config experiments/embedded/finetune.yaml --out artifacts/cache/embedded [--splits train,val,test]
              [--data.init_args.root=OTHER ...]      # further arguments: config overrides, as for vrp fit

Then set the datamodule's `feature_cache: <out>` (the embedded default does). The store holds one deterministic
view per clip (the datamodule's eval sampling, no crop) and records the vision encoder's config; the stage module
refuses a store built with another encoder. Each entry records the video file it was computed from, and a run that
reads another file under the same name is refused (`FeatureCacheMismatch`). Re-running skips videos already stored
from the same file and re-encodes the others.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch
from torch import nn

from data_modules.features import FeatureStore
from vrp.tools.lightning_cli import module_and_datamodule
from vrp.training.datamodule_handoff import vision_meta


def write_features(vision: nn.Module, loader, records: Iterable, store: FeatureStore, *, batch_size: int = 16) -> int:
    """Encode each record's video once (decoded and transformed by the eval ``loader``, a `ClipLoader`) into
    ``store``, each tied to its file; returns how many videos were written (entries computed from the same file are
    kept; missing, damaged ones and ones computed from another file are encoded again)."""
    todo, seen = [], set()
    for rec in records:
        if rec.modality != "video" or rec.video_key in seen:
            continue
        seen.add(rec.video_key)
        stale = isinstance(rec.video, str) and rec.video_key in store and store.check(rec.video_key, rec.video)
        if rec.video_key not in store or stale:  # missing, damaged, or computed from another file: (re-)encode
            todo.append(rec)
    device = next(vision.parameters()).device
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        clips = [loader.decode(rec) for rec in chunk]
        frames = torch.stack([loader.transform(c.frames, None, None)[0] for c in clips])  # (B, T, C, H, W)
        with torch.no_grad():
            visual = vision(frames.to(device))  # (B, T, N, D)
        for rec, clip, v in zip(chunk, clips, visual):
            source = rec.video if isinstance(rec.video, str) else None
            store.write(rec.video_key, v, clip.frame_mask, clip.timestamps, clip.fps, source=source)
    return len(todo)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vrp cache", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="stage YAML(s), as for `vrp fit`")
    p.add_argument("--out", required=True)
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits of the datamodule to cache")
    p.add_argument("--batch-size", type=int, default=16)
    a, overrides = p.parse_known_args(argv)  # e.g. --data.init_args.root=OTHER, as for `vrp fit`
    splits = [s for s in a.splits.split(",") if s]
    module, dm = module_and_datamodule(
        a.config, [*overrides, "--data.init_args.feature_cache=null", "--data.init_args.tracks=null"], splits
    )  # no cache to read yet
    vision = module.model.vision.eval()
    store = FeatureStore(a.out, create=True)
    loader = dm.clip_loader(train=False)
    start = time.time()
    for split in splits:
        if split not in dm.records:
            raise SystemExit(
                f"vrp cache: the datamodule has no map-style {split!r} records to cache (has: {sorted(dm.records)})"
            )
        n = write_features(vision, loader, dm.records[split], store, batch_size=a.batch_size)
        print(f"{split}: cached {n} new videos ({time.time() - start:.0f} s)", flush=True)
    store.finish(vision=vision_meta(module.hparams.get("model")), num_frames=dm.num_frames, sampling=dm.eval_sampling)
    print(f"feature cache {a.out}: {store.meta['videos']} videos")
