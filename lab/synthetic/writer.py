"""Generate the synthetic benchmark: simulate + render + encode each video (in parallel), then balance questions
per split and write every annotation format (layout: `.helpers/API.md`, documented in `generate`)."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from data_modules.video import write_video
from lab.synthetic.baselines import blind_baselines
from lab.synthetic.questions import TYPES, Candidate, Item, balance, captions, propose
from lab.synthetic.render import render_frames
from lab.synthetic.simulator import Scene, random_scene, simulate
from lab.synthetic.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
HORIZON = 16  # frames simulated past the clip, for predictive questions
FPS = 8.0


@dataclass(frozen=True)
class VideoJob:
    split: str
    index: int
    seed: int
    videos_dir: str
    size: int
    min_frames: int
    max_frames: int
    min_objects: int
    max_objects: int

    @property
    def key(self) -> str:
        return f"{self.split}_{self.index:06d}"


@dataclass
class VideoRecord:
    key: str
    duration: float
    captions: list[str]
    objects: list[str]
    boxes: list[list[list[float]]]  # (F, K, 4) normalised xyxy
    candidates: list[Candidate]


def draw_scene(job: VideoJob) -> tuple[np.random.Generator, Scene, int]:
    """The video's random stream, drawn from SeedSequence([seed, split index, index]), its scene and its number of
    observed frames (tests re-simulate from this)."""
    rng = np.random.default_rng(np.random.SeedSequence([job.seed, SPLITS.index(job.split), job.index]))
    scene, num_frames = draw(rng, job.size, job.min_frames, job.max_frames, job.min_objects, job.max_objects)
    return rng, scene, num_frames


def draw(
    rng: np.random.Generator, size: int, min_frames: int, max_frames: int, min_objects: int, max_objects: int
) -> tuple[Scene, int]:
    """A scene and its number of observed frames by the benchmark's rules, from ``rng`` (the knowledge corpus of
    `lab.synthetic.knowledge` draws its own scenes with it too)."""
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    scene = random_scene(rng, size=size, num_objects=int(rng.integers(min_objects, max_objects + 1)))
    return scene, num_frames


def make_video(job: VideoJob) -> VideoRecord:
    """Everything about one video; deterministic in (seed, split, index) whatever process runs it."""
    rng, scene, num_frames = draw_scene(job)
    traj = simulate(scene, num_frames + HORIZON)
    frames = render_frames(scene, traj.positions[:num_frames])  # (T, H, W, 3)
    write_video(Path(job.videos_dir) / f"{job.key}.mp4", frames, fps=FPS)
    radii = np.array([o.radius for o in scene.objects])
    boxes = np.round(traj.boxes(radii, scene.size)[:num_frames], 4).tolist()
    return VideoRecord(
        key=job.key,
        duration=num_frames / FPS,
        captions=captions(scene, traj, num_frames, rng),
        objects=[o.name for o in scene.objects],
        boxes=boxes,
        candidates=propose(scene, traj, num_frames, rng),
    )


def split_sizes(videos: int, train_videos: int | None = None) -> dict[str, int]:
    """80/10/10 by video (at least one val and one test video when videos >= 3); ``train_videos`` replaces the
    train count and leaves val and test as ``videos`` makes them (a video depends only on its seed, split and index,
    and each split is balanced on its own, so the val and test questions stay the same)."""
    held = max(1, round(videos * 0.1)) if videos >= 3 else 0
    if train_videos is not None and train_videos < 1:
        raise ValueError(f"train_videos must be >= 1, got {train_videos}")
    return {"train": videos - 2 * held if train_videos is None else train_videos, "val": held, "test": held}


def generate(
    out: str | Path,
    videos: int,
    seed: int,
    *,
    size: int = 128,
    min_frames: int = 16,
    max_frames: int = 32,
    min_objects: int = 2,
    max_objects: int = 5,
    workers: int = 2,
    shard_size: int = 1000,
    vocab_size: int = 1024,
    train_videos: int | None = None,
) -> dict:
    """Write the benchmark under `out` and return its meta (also written to `out/meta.json`).

    Layout: `<out>/meta.json`, `<out>/tokenizer/`, and per split `<out>/<split>/` with `videos/<key>.mp4`,
    `shards/<split>-NNNNNN.tar` (WebDataset: `<key>.mp4` + `<key>.json`), `captions.csv` (WebVid columns),
    `instructions.json` (LLaVA conversations), `mc.csv` (NExT-QA columns) and `boxes.json`.
    """
    if not 2 <= min_objects <= max_objects <= 5:
        raise ValueError(f"need 2 <= min_objects <= max_objects <= 5, got {min_objects}..{max_objects}")
    if not 2 <= min_frames <= max_frames:
        raise ValueError(f"need 2 <= min_frames <= max_frames, got {min_frames}..{max_frames}")
    out = Path(out)
    sizes = split_sizes(videos, train_videos)
    jobs = []
    for split in SPLITS:
        (out / split / "videos").mkdir(parents=True, exist_ok=True)
        jobs += [
            VideoJob(
                split, i, seed, str(out / split / "videos"), size, min_frames, max_frames, min_objects, max_objects
            )
            for i in range(sizes[split])
        ]
    if workers > 1:
        # spawn, not fork: a forked child inherits whatever locks the parent's threads (torch, FFmpeg) held at the
        # fork, and one such child hung a CI run's generate(); the jobs are small tuples, so spawning costs an import
        with mp.get_context("spawn").Pool(workers) as pool:
            records = pool.map(make_video, jobs, chunksize=8)
    else:
        records = [make_video(j) for j in jobs]

    by_split: dict[str, list[VideoRecord]] = defaultdict(list)
    for job, rec in zip(jobs, records):
        by_split[job.split].append(rec)
    items: dict[str, list[Item]] = {}
    for split in SPLITS:
        items[split] = _balance_split(by_split[split], np.random.default_rng([seed, SPLITS.index(split), 1]))
        _write_split(out / split, split, by_split[split], items[split], shard_size)

    texts = [c for recs in by_split.values() for r in recs for c in r.captions]
    texts += [f"{it.question} {' '.join(it.options)} {it.sentence}" for its in items.values() for it in its]
    build_tokenizer(texts, out / "tokenizer", vocab_size=vocab_size)

    baselines = {split: blind_baselines(items["train"], items[split]) for split in ("val", "test")}
    meta = {
        "seed": seed,
        "config": dict(
            videos=videos,
            **({} if train_videos is None else {"train_videos": train_videos}),
            size=size,
            min_frames=min_frames,
            max_frames=max_frames,
            min_objects=min_objects,
            max_objects=max_objects,
            horizon=HORIZON,
            fps=FPS,
            vocab_size=vocab_size,
        ),
        "counts": {
            split: {
                "videos": len(by_split[split]),
                "items": len(items[split]),
                "per_type": {t: sum(it.type == t for it in items[split]) for t in TYPES},
                "per_template": dict(sorted(_count(it.template for it in items[split]).items())),
            }
            for split in SPLITS
        },
        "baselines": baselines,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return counts


def _balance_split(records: list[VideoRecord], rng: np.random.Generator) -> list[Item]:
    per_template: dict[str, list] = defaultdict(list)
    for rec in records:
        for qid, cand in enumerate(rec.candidates):
            per_template[cand.template].append((rec.key, qid, cand))
    items = [it for template in sorted(per_template) for it in balance(per_template[template], rng)]
    return sorted(items, key=lambda it: (it.key, it.qid))


def _write_split(root: Path, split: str, records: list[VideoRecord], items: list[Item], shard_size: int) -> None:
    (root / "shards").mkdir(exist_ok=True)
    with wds.ShardWriter(str(root / "shards" / f"{split}-%06d.tar"), maxcount=shard_size, mtime=0.0, verbose=0) as sink:
        for rec in records:
            sink.write(
                {
                    "__key__": rec.key,
                    "mp4": (root / "videos" / f"{rec.key}.mp4").read_bytes(),
                    "json": {"key": rec.key, "caption": rec.captions[0], "captions": rec.captions},
                }
            )
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for rec in records:
            w.writerow([rec.key, f"videos/{rec.key}.mp4", f"{rec.duration:.3f}", "synthetic", rec.captions[0]])
    conversations = [
        {
            "id": f"{it.key}_{it.qid}",
            "video": f"videos/{it.key}.mp4",
            "type": it.type,
            "template": it.template,
            "options": it.options,
            "answer_index": it.answer_index,
            "answer_sentence": it.sentence,
            "conversations": [
                {"from": "human", "value": f"<video>\n{it.question}"},
                {"from": "gpt", "value": it.answer},
            ],
        }
        for it in items
    ]
    (root / "instructions.json").write_text(json.dumps(conversations, indent=1))
    with open(root / "mc.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "question", "answer", "a0", "a1", "a2", "a3", "a4", "qid", "type"])
        for it in items:
            opts = it.options + [""] * (5 - len(it.options))
            w.writerow([it.key, it.question, it.answer_index, *opts, it.qid, it.type])
    (root / "boxes.json").write_text(json.dumps({r.key: {"objects": r.objects, "boxes": r.boxes} for r in records}))
