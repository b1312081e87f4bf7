"""`vrp track`: run the model's object stage (detector + tracker, `vrp.models.tracking.ObjectStage`) over every video
of the datamodule's splits and write its tracks in the boxes layout (`data_modules.sources.boxes`), one file per
split, which the datamodule's ``tracks: <out>`` then reads (the embedded default does).

    vrp track --config experiments/embedded/finetune.yaml --out artifacts/tracks/embedded [--splits train,val,test]
    vrp track ... --score-against data/synthetic      # also: precision / recall / id switches vs <root>/<split>/boxes.json

Every frame of a video is tracked at its own rate (a video of more than ``--max-frames`` frames at a lower, even
rate, each tracked row then standing for the frames up to the next). ``<out>/meta.json`` records the object stage,
the time per clip and, with ``--score-against``, the scores per split. Re-running rewrites the files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.video import VideoReadError, read_video


class _Frames(Dataset):
    """Every frame of each video (its own rate, at most ``max_frames`` evenly spread) at ``short_side``."""

    def __init__(self, videos: list[tuple[str, str]], short_side: int | None, max_frames: int):
        self.videos, self.short_side, self.max_frames = videos, short_side, max_frames

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | str, torch.Tensor | None, int]:
        key, path = self.videos[i]
        try:
            probe = read_video(path, 1, threads=1)
            count = max(1, round(probe.duration * probe.fps))
            rate = probe.fps * min(1.0, self.max_frames / count)
            clip = read_video(
                path, min(count, self.max_frames), sampling="fps", fps=rate, short_side=self.short_side, threads=1
            )
        except VideoReadError as e:
            return key, str(e), None, 0
        index = (clip.timestamps[clip.frame_mask] * probe.fps).round().long()  # source frame of each tracked row
        return key, clip.frames[clip.frame_mask], index, count


def entry(tracks: torch.Tensor, index: torch.Tensor, count: int) -> dict:
    """tracks (R, K, 4) of the rows at source frames ``index`` (R,) -> a boxes-file entry of ``count`` frames; frames
    between tracked rows repeat the row before them."""
    row = torch.searchsorted(index, torch.arange(max(count, int(index[-1]) + 1)), right=True).sub(1).clamp(min=0)
    boxes = [[None if b.isnan().any() else [round(v, 4) for v in b.tolist()] for b in tracks[r]] for r in row]
    return {"objects": [f"object {k}" for k in range(tracks.shape[1])], "boxes": boxes}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vrp track", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="stage YAML(s), as for `vrp fit`")
    p.add_argument("--out", required=True, help="folder for <split>.json and meta.json")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits of the datamodule")
    p.add_argument("--max-frames", type=int, default=4096, help="frames tracked per video at most")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--score-against", help="a root with <split>/boxes.json ground truth (the synthetic data)")
    a, rest = p.parse_known_args(argv)
    from data_modules.sources.boxes import BoxTable
    from vrp.scoring.detection import TrackScore, score_tracks
    from vrp.tools.lightning_cli import module_and_datamodule

    splits = [s for s in a.splits.split(",") if s]
    module, dm = module_and_datamodule(a.config, rest + ["--data.init_args.tracks=null"], splits)
    objects = module.model.objects
    if objects is None:
        raise SystemExit(
            "vrp track: the configured model has no object stage (model.init_args.model.init_args.objects)"
        )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict = {"objects": (module.hparams.get("model") or {}).get("init_args", {}).get("objects"), "splits": {}}
    for split in splits:
        if split not in dm.records:
            raise SystemExit(f"vrp track: the datamodule has no {split!r} records (has: {sorted(dm.records)})")
        videos = sorted({(r.video_key, str(r.video)) for r in dm.records[split] if r.modality == "video"})
        loader = DataLoader(
            _Frames(videos, objects.short_side, a.max_frames),
            batch_size=None,
            num_workers=a.workers,
            prefetch_factor=4 if a.workers else None,
        )
        truth = BoxTable(str(Path(a.score_against) / split / "boxes.json")) if a.score_against else None
        score, table, failed, frames = TrackScore(), {}, [], 0
        start = time.time()
        for key, frames_or_error, index, count in loader:
            if index is None:
                failed.append(f"{key}: {frames_or_error}")
                continue
            tracks = objects(frames_or_error)  # (R, K, 4)
            frames += len(tracks)
            table[key] = entry(tracks, index, count)
            if truth is not None:  # the ground truth at the tracked rows
                gt = truth.table[key]
                score.add(score_tracks(tracks, gt[index.clamp(max=len(gt) - 1)]))
        seconds = time.time() - start
        (out / f"{split}.json").write_text(json.dumps(table))
        meta["splits"][split] = {
            "videos": len(table),
            "failed": failed,
            "frames": frames,
            "seconds": round(seconds, 1),
            "ms_per_clip": round(1000 * seconds / max(len(table), 1), 1),
            **({"score": score.summary()} if truth is not None else {}),
        }
        line = f"{split}: {len(table)} videos, {frames} frames tracked in {seconds:.0f} s"
        if truth is not None:
            s = score.summary()
            line += (
                f"; precision {s['precision']:.3f}, recall {s['recall']:.3f} (IoU >= 0.5, mean IoU {s['mean_iou']:.3f}), "
                f"{s['id_switches']} id switches over {s['objects']} objects ({s['id_switches_per_track']} per track)"
            )
        print(line + (f"; {len(failed)} unreadable (listed in meta.json)" if failed else ""), flush=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
