"""Datasets: decode + transform records. Map-style for manifests, streaming (resumable) for WebDataset shards."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Literal

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from data_modules.features import FeatureStore
from data_modules.skips import BadSample, SkipCounter
from data_modules.sources.boxes import ObjectTracker, rows_at, substep_times
from data_modules.sources.record import Record
from data_modules.sources.webdataset import WebDatasetSource
from data_modules.transforms import VideoTransform
from data_modules.video import DecodedClip, VideoReadError, read_image, read_video


class ClipLoader:
    """Record -> sample dict (decoded, sampled, transformed clip + its text); raises :class:`BadSample`.

    Image records become clips of ``image_frames`` real frames (the rest padding); text-only records get one black
    frame that the model never sees (their prompt has no placeholder, so no visual token enters the LLM).
    """

    def __init__(
        self,
        transform: VideoTransform,
        *,
        num_frames: int = 8,
        sampling: Literal["uniform", "segment", "fps"] = "uniform",
        fps: float | None = None,
        short_side: int | None = None,
        image_frames: int = 1,
        box_attributes: list[str] | None = None,
        box_substeps: int = 1,
        features: FeatureStore | None = None,
        damaged: Literal["skip", "keep"] = "skip",
        objects: ObjectTracker | None = None,
        max_track_frames: int = 512,
        max_frames: int | None = None,
    ) -> None:
        """``box_attributes``: an attribute vocabulary; when set, samples carry ``box_attributes`` (K, V), the
        multi-hot words of the boxes' object names (state oracle only: a model that must see pixels never gets them).
        ``box_substeps``: S box rows per sampled frame (`data_modules.sources.boxes.substep_times`), so ``boxes`` is
        (T * S, K, 4): the track between the sampled frames, for a fusion built with the same ``box_substeps``.
        ``features``: read each video's frozen-encoder tokens from this store (sample key ``visual``) instead of
        decoding it. ``damaged``: a clip some of whose packets fail to decode is skipped (``decode_error``) or kept,
        decoded from its readable packets. ``objects``: the object stage that gives a video without a boxes entry its
        tracks, run on its frames at the video's own rate (at most ``max_track_frames`` of them, evenly spread) up
        to the last box row. ``max_frames``: the token budget's frame cap
        (`data_modules.packing.TokenBudget.max_frames`): a clip keeps at most that many real frames, evenly spread
        over its window (an fps clip that would need more gets a lower rate over the whole window, never a cut end;
        cached tokens keep evenly spread frames), padded to ``num_frames``; 0 skips the sample (``over_budget``)."""
        if not 1 <= image_frames <= num_frames:
            raise ValueError(f"image_frames must be in [1, num_frames={num_frames}], got {image_frames}")
        self.transform, self.num_frames, self.sampling, self.fps = transform, num_frames, sampling, fps
        self.short_side, self.image_frames, self.damaged = short_side, image_frames, damaged
        self.box_attributes, self.features = box_attributes, features
        if box_substeps < 1:
            raise ValueError(f"box_substeps must be >= 1, got {box_substeps}")
        self.box_substeps = box_substeps
        self.objects, self.max_track_frames = objects, max_track_frames
        self.max_frames = num_frames if max_frames is None else min(num_frames, max_frames)

    def read(self, rec: Record) -> DecodedClip:
        """`read_clip`, within the ``max_frames`` cap (fewer real frames, padded back to ``num_frames``)."""
        if self.max_frames >= self.num_frames or rec.modality == "text":
            return self.read_clip(rec, self.num_frames)
        if self.max_frames < 1:
            raise BadSample(rec.where, "over_budget", "token_budget.max_visual_tokens leaves no frame")
        clip = self.read_clip(rec, self.max_frames)
        if self.sampling == "fps" and rec.modality == "video" and bool(clip.frame_mask.all()):
            end = clip.duration if rec.end_sec is None else min(rec.end_sec, clip.duration)
            if float(clip.timestamps[-1]) + 1.0 / self.fps < end:  # the window holds more: spread them over it all
                clip = self.read_clip(rec, self.max_frames, sampling="uniform")
        return _pad_clip(clip, self.num_frames)

    def read_clip(self, rec: Record, num_frames: int, sampling: str | None = None) -> DecodedClip:
        """The record's frames: a clip (or its ``start_sec``/``end_sec`` window), an image, or a blank for text."""
        if rec.modality == "text":
            size = self.transform.image_size
            return DecodedClip(
                frames=torch.zeros(num_frames, 3, size, size, dtype=torch.uint8),
                timestamps=torch.zeros(num_frames),
                frame_mask=torch.arange(num_frames) < 1,
                fps=1.0,
                duration=0.0,
            )
        if rec.modality == "image":
            real = min(self.image_frames, num_frames)
            return read_image(rec.video, num_frames, real_frames=real, short_side=self.short_side)
        sampling = sampling or self.sampling
        return read_video(
            rec.video,
            num_frames,
            sampling=sampling,
            fps=self.fps if sampling == self.sampling else None,
            start_sec=rec.start_sec,
            end_sec=rec.end_sec,
            short_side=self.short_side,
            name=rec.where if isinstance(rec.video, bytes) else None,
        )

    def decode(self, rec: Record) -> DecodedClip:
        """`read`, with unreadable input as a counted :class:`BadSample`."""
        try:
            clip = self.read(rec)
        except VideoReadError as e:
            reason = "missing_file" if e.reason == "file not found" else "decode_error"
            raise BadSample(rec.where, reason, str(e)) from e
        if clip.failed_packets and self.damaged == "skip":
            raise BadSample(
                rec.where,
                "decode_error",
                f"{clip.failed_packets} packets failed to decode (a partly "
                "damaged clip; damaged_clips='keep' would use its readable frames)",
            )
        return clip

    def __call__(self, rec: Record) -> dict:
        if self.features is not None and rec.modality == "video":
            try:
                # visual, frame_mask, timestamps, fps; computed from this very file (else FeatureCacheMismatch)
                cached = self.features.read(rec.video_key, source=rec.video if isinstance(rec.video, str) else None)
            except KeyError as e:
                raise BadSample(rec.where, "missing_file", str(e)) from e
                raise BadSample(rec.where, "not_cached", str(e)) from e
            cached = self._cap_cached(rec, cached)
            boxes, box_mask, attributes = self._boxes(
                rec, cached["timestamps"], float(cached["fps"]), cached["frame_mask"]
            )
            return self._sample(rec, {"visual": cached["visual"]}, cached["frame_mask"], boxes, box_mask, attributes)
        return self.sample(rec, self.decode(rec))

    def _cap_cached(self, rec: Record, cached: dict) -> dict:
        """Cached tokens within the ``max_frames`` cap: evenly spread real frames kept, the others masked."""
        real = cached["frame_mask"].nonzero().flatten()
        if len(real) <= self.max_frames:
            return cached
        if self.max_frames < 1:
            raise BadSample(rec.where, "over_budget", "token_budget.max_visual_tokens leaves no frame")
        keep = real[torch.linspace(0, len(real) - 1, self.max_frames).round().long()]
        mask = torch.zeros_like(cached["frame_mask"])
        mask[keep] = True
        return {**cached, "frame_mask": mask}

    def sample(self, rec: Record, clip: DecodedClip) -> dict:
        """The sample dict of ``rec`` with its decoded ``clip``: boxes looked up, frames transformed."""
        boxes, box_mask, attributes = self._boxes(rec, clip.timestamps, clip.fps, clip.frame_mask)
        video, boxes, box_mask = self.transform(clip.frames, boxes, box_mask)
        return self._sample(rec, {"video": video}, clip.frame_mask, boxes, box_mask, attributes)

    def _boxes(self, rec: Record, timestamps: torch.Tensor, fps: float, frame_mask: torch.Tensor):
        """Boxes (T * S, K, 4), box mask (T * S, K) of the sampled frames (S = ``box_substeps`` rows each), and the
        oracle's attributes (K, V) if asked for."""
        if rec.modality != "video" or (rec.boxes is None and self.objects is None):
            return None, None, None
        if rec.boxes is None:
            boxes, box_mask = self.track(rec, timestamps, fps)
            return boxes, box_mask & frame_mask.repeat_interleave(self.box_substeps)[:, None], None
        if rec.video_key not in rec.boxes:
            raise BadSample(rec.where, "bad_boxes", rec.boxes.why_missing(rec.video_key))
        boxes, box_mask = rec.boxes.lookup(rec.video_key, timestamps, fps, self.box_substeps)
        attributes = (
            rec.boxes.attributes(rec.video_key, self.box_attributes) if self.box_attributes is not None else None
        )
        return boxes, box_mask & frame_mask.repeat_interleave(self.box_substeps)[:, None], attributes

    def track(self, rec: Record, timestamps: torch.Tensor, fps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The object stage's tracks of ``rec``'s video at the box rows of the sampled frames: boxes (T * S, K, 4),
        mask (T * S, K); K >= 1 (a video where nothing is found gets one masked box per row)."""
        times = substep_times(timestamps, self.box_substeps)
        start = rec.start_sec or 0.0
        end = float(times[-1]) + 1.0 / fps  # through the frame of the last box row
        rate = min(fps, self.max_track_frames / max(end - start, 1e-6))
        try:
            clip = read_video(
                rec.video,
                max(1, math.ceil((end - start) * rate)),
                sampling="fps",
                fps=rate,
                start_sec=start,
                end_sec=end,
                short_side=self.objects.short_side,
                name=rec.where if isinstance(rec.video, bytes) else None,
            )
        except VideoReadError as e:
            raise BadSample(rec.where, "decode_error", str(e)) from e
        real = clip.frame_mask
        return rows_at(self.objects(clip.frames[real]), clip.timestamps[real], times)

    @staticmethod
    def _sample(rec: Record, pixels: dict, frame_mask, boxes, box_mask, attributes) -> dict:
        return {
            "key": rec.key,
            **pixels,
            "frame_mask": frame_mask,
            "boxes": boxes,
            "box_mask": box_mask,
            "box_attributes": attributes,
            "turns": rec.turns,
            "qformer_text": rec.qformer_text,
            "question_type": rec.question_type,
            "options": rec.options,
            "answer_index": rec.answer_index,
            "modality": rec.modality,
            "system": rec.system,
        }


def _pad_clip(clip: DecodedClip, num_frames: int) -> DecodedClip:
    """``clip`` with padding frames (black, masked False, the last real time) up to ``num_frames``."""
    extra = num_frames - clip.frames.shape[0]
    if extra <= 0:
        return clip
    last = clip.timestamps[-1:].expand(extra)
    return DecodedClip(
        frames=torch.cat([clip.frames, clip.frames.new_zeros(extra, *clip.frames.shape[1:])]),
        timestamps=torch.cat([clip.timestamps, last]),
        frame_mask=torch.cat([clip.frame_mask, torch.zeros(extra, dtype=torch.bool)]),
        fps=clip.fps,
        duration=clip.duration,
        failed_packets=clip.failed_packets,
    )


def sample_seed(*parts: object) -> int:
    """A 63-bit seed that is a function of ``parts`` only (not of the process, worker or RNG history)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded(seed: int | None, fn: Callable[[], dict]) -> dict:
    """``fn()`` with torch's CPU RNG seeded by ``seed`` (its random frame sampling and crop), the global state left as
    it was; ``seed=None`` runs it on the global RNG. Seeds per sample make augmentation independent of which worker
    decodes a sample and of how far its RNG has run, so a resumed run sees exactly the clips an uninterrupted one
    sees."""
    if seed is None:
        return fn()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


class MapDataset(Dataset):
    """Records in memory. Training (``replace_bad=True``): a bad record is counted and replaced by the next good one
    (so batches keep their size and ranks stay in step); ``max_retries`` consecutive bad records raise.
    Evaluation (``replace_bad=False``): a bad record is counted and comes out as a ``{"key", "skipped": reason}``
    marker that the collator lists under ``batch["skipped"]``, so no question is scored twice or silently lost."""

    def __init__(
        self,
        records: list[Record],
        loader: ClipLoader,
        skips: SkipCounter,
        max_retries: int = 20,
        replace_bad: bool = True,
    ) -> None:
        if not records:
            raise ValueError("MapDataset got no records; check the source's path and the skip log")
        self.records, self.loader, self.skips, self.max_retries = records, loader, skips, max_retries
        self.replace_bad = replace_bad

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> dict:
        """Record ``i`` decoded, its randomness seeded by (the epoch's loader seed, ``i``) in a worker process (that
        base seed is restored on resume by the StatefulDataLoader); in the main process, from the global RNG."""
        info = get_worker_info()
        seed = None if info is None else sample_seed(info.seed - info.id, i)
        return seeded(seed, lambda: self.loader(self.records[i]))

    def __getitem__(self, i: int) -> dict:
        if not self.replace_bad:
            try:
                sample = self._load(i)
            except BadSample as e:
                self.skips.skip(e.key, e.reason, e.detail)
                return {"key": self.records[i].key, "skipped": e.reason}
            self.skips.good()
            return sample
        for attempt in range(self.max_retries):
            try:
                sample = self._load((i + attempt) % len(self.records))
            except BadSample as e:
                self.skips.skip(e.key, e.reason, e.detail)
                continue
            self.skips.good()
            return sample
        raise RuntimeError(f"{self.max_retries} consecutive bad records from index {i}; see the skip log")


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Shuffle buffer: keep ``size`` items, emit a random one as each new item arrives."""
    buf = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class StreamingDataset(IterableDataset):
    """WebDataset shards split across ranks and workers, shuffled through a buffer, in an order fixed by
    (seed, epoch); resumable mid-epoch.

    Split: with at least as many shards as ``world_size * num_workers`` readers, each reader takes every G-th shard
    (after a per-epoch shard shuffle); with fewer, each reader reads all shards and keeps every G-th sample.
    State (per worker, collected by ``torchdata``'s StatefulDataLoader): the epoch and how many records this worker
    has taken from its stream; on resume the same stream is rebuilt and that many records are dropped undecoded.
    Resuming needs the same ``num_workers``, ``world_size`` and shards. Epochs are counted per worker in shared
    memory, so each pass over the loader is the next epoch without help from the trainer.
    """

    def __init__(
        self,
        source: WebDatasetSource,
        loader: ClipLoader,
        skips: SkipCounter,
        *,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_workers: int = 64,
    ) -> None:
        self.source, self.loader, self.skips = source, loader, skips
        self.shuffle, self.shuffle_buffer, self.seed, self.rank, self.world_size = (
            shuffle,
            shuffle_buffer,
            seed,
            rank,
            world_size,
        )
        self.epochs = torch.zeros(max_workers + 1, dtype=torch.int64).share_memory_()  # epochs started, per worker
        self._epoch, self._taken, self._resume = 0, 0, None

    def stream(self, epoch: int, reader: int, readers: int) -> Iterator:
        """Records (or BadSample markers) of one reader for one epoch; the order depends only on the arguments."""
        shards = self.source.shards()
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(shards)
        if len(shards) >= readers:
            items = self.source.records(shards[reader::readers], self.skips)
        else:
            items = islice(self.source.records(shards, self.skips), reader, None, readers)
        if self.shuffle and self.shuffle_buffer > 1:
            items = _shuffled(items, self.shuffle_buffer, random.Random(f"{self.seed}/{epoch}/{reader}"))
        return items

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        row = 0 if info is None else worker + 1
        if self._resume is not None:
            epoch, skip = self._resume["epoch"], self._resume["taken"]
            self._resume = None
        else:
            epoch, skip = int(self.epochs[row]), 0
        self.epochs[row] = epoch + 1
        self._epoch, self._taken = epoch, 0
        reader = self.rank * workers + worker
        for item in self.stream(epoch, reader, self.world_size * workers):
            self._taken += 1
            if self._taken <= skip:
                continue
            try:
                if isinstance(item, BadSample):
                    raise item
                sample = seeded(sample_seed(self.seed, epoch, reader, self._taken), lambda: self.loader(item))
            except BadSample as e:
                self.skips.skip(e.key, e.reason, e.detail)
                continue
            self.skips.good()
            yield sample

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "taken": self._taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)
