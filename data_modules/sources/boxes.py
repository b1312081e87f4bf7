"""Per-frame object boxes from a side file keyed by video: the synthetic ``boxes.json`` or detections in the same
layout: ``{key: {"objects": [names], "boxes": [[[x1, y1, x2, y2] | null per object] per frame]}}``, xyxy in [0, 1]
of the frame, one entry per decoded frame of the source video."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

log = logging.getLogger(__name__)


class BoxTable:
    """Loads a boxes file once; ``lookup`` picks the rows of the sampled frames by their timestamps."""

    def __init__(self, path: str) -> None:
        path_ = Path(path)
        if not path_.is_file():
            raise FileNotFoundError(f"boxes file {path_} does not exist; set `boxes` to a valid file or null")
        with open(path_, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise ValueError(f"{path_}: expected an object keyed by video key")
        self.path = str(path_)
        self.table: dict[str, torch.Tensor] = {}  # key -> (F, K, 4) float, NaN where an object is absent
        self.objects: dict[str, list[str]] = {}
        self.refused: dict[str, str] = {}  # key -> why its entry was refused (its samples are skipped, counted)
        for key, entry in raw.items():
            try:
                t, objects = _parse_entry(entry)
            except ValueError as e:
                self.refused[str(key)] = str(e)
                continue
            self.table[str(key)], self.objects[str(key)] = t, objects
        if self.refused:
            shown = "; ".join(f"{k!r}: {why}" for k, why in list(self.refused.items())[:3])
            log.warning(
                "%s: refused %d of %d entries (%s%s); their samples are skipped as bad_boxes",
                self.path,
                len(self.refused),
                len(raw),
                shown,
                "; ..." if len(self.refused) > 3 else "",
            )

    def why_missing(self, key: str) -> str:
        """Why ``key`` has no boxes: its refused entry's fault, or no entry at all (one line, naming the file)."""
        if key in self.refused:
            return f"entry {key!r} of {self.path} was refused: {self.refused[key]}"
        return f"no entry {key!r} in {self.path}"

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def attributes(self, key: str, vocabulary: list[str]) -> torch.Tensor:
        """(K, V) multi-hot of the words of each object's name found in ``vocabulary`` (e.g. "red circle" -> red,
        circle): the state oracle's input, never a model's."""
        index = {word: i for i, word in enumerate(vocabulary)}
        out = torch.zeros(len(self.objects[key]), len(vocabulary))
        for k, name in enumerate(self.objects[key]):
            for word in name.split():
                if word in index:
                    out[k, index[word]] = 1.0
        return out

    def lookup(
        self, key: str, timestamps: torch.Tensor, fps: float, substeps: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (T * S, K, 4) and mask (T * S, K) of the frames at ``timestamps`` (seconds), S = ``substeps``:
        row ``t * S + s`` is the box at `substep_times` (s = 0: the sampled frame itself), interpolated between the
        two frames around its time (`interpolate_frames`); rows between frames that fall past the video's last
        frame are masked."""
        t = self.table[key]  # (F, K, 4)
        pos = substep_times(timestamps, substeps).double() * fps  # (T * S,) fractional frame positions
        boxes = interpolate_frames(t, pos)
        last = pos.round().long()
        between = torch.arange(len(pos)) % substeps != 0  # the rows after a sampled frame
        mask = ~boxes.isnan().any(-1) & ~(between & (last >= t.shape[0]))[:, None]
        return boxes.nan_to_num(0.0), mask


def interpolate_frames(tracks: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """tracks (F, K, 4), NaN where an object is absent, at fractional frame positions ``pos`` (R,) -> (R, K, 4):
    linear between the two frames around each position where the object is in both, else the nearer frame's box
    (NaN if absent there). Rows between frames then move as the object does, instead of repeating a frame and
    jumping (which reads as a stop and a start)."""
    F = tracks.shape[0]
    pos = pos.clamp(0, F - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=F - 1)
    w = (pos - i0).to(tracks.dtype)[:, None, None]  # (R, 1, 1)
    a, b = tracks[i0], tracks[i1]
    both = ~(a.isnan().any(-1) | b.isnan().any(-1))[..., None]
    return torch.where(both, a + (b - a) * w, torch.where(w >= 0.5, b, a))


EXPECTED = '{"objects": [...], "boxes": [[[x1,y1,x2,y2] or null per object] per frame]}, coordinates in [0, 1]'
TOLERANCE = 1e-3  # rounding at the frame's edge


def _parse_entry(entry) -> tuple[torch.Tensor, list[str]]:
    """(F, K, 4) boxes (NaN where an object is absent) and the object names of one entry; ValueError saying what is
    wrong (malformed, a box that is not 4 numbers, non-finite or out-of-range coordinates, with frame and object)."""
    try:
        objects, frames = entry["objects"], entry["boxes"]
        t = torch.full((len(frames), len(objects), 4), float("nan"))
        given = torch.zeros(t.shape[:2], dtype=torch.bool)
        for f, row in enumerate(frames):
            for k, box in enumerate(row):
                if box is not None:
                    t[f, k], given[f, k] = torch.tensor(box, dtype=torch.float32), True
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ValueError(f"malformed ({type(e).__name__}: {e}); expected {EXPECTED}") from None
    bad = given[..., None] & ~t.isfinite()
    if bad.any():
        f, k, _ = bad.nonzero()[0].tolist()
        raise ValueError(f"non-finite coordinates {t[f, k].tolist()} at frame {f}, object {k}")
    outside = given[..., None] & ((t < -TOLERANCE) | (t > 1 + TOLERANCE))
    if outside.any():
        f, k, _ = outside.nonzero()[0].tolist()
        raise ValueError(f"coordinates {t[f, k].tolist()} outside [0, 1] at frame {f}, object {k}")
    return t, list(objects)


def substep_times(timestamps: torch.Tensor, substeps: int) -> torch.Tensor:
    """(T,) sampled frame times -> (T * S,): each time, then S - 1 evenly spaced times up to the next one (after the
    last, spaced as before it). S = 1 returns ``timestamps``: the boxes of the sampled frames only; S > 1 gives a
    tracker's boxes between the sampled frames, so a model sees motion and contacts at the video's own rate."""
    if substeps < 1:
        raise ValueError(f"box substeps must be >= 1, got {substeps}")
    if substeps == 1:
        return timestamps
    ts = timestamps.double()
    gap = ts.diff() if len(ts) > 1 else ts.new_zeros(0)
    gap = torch.cat([gap, gap[-1:] if len(gap) else ts.new_zeros(1)])  # (T,): the last interval repeats the one before
    frac = torch.arange(substeps, dtype=ts.dtype) / substeps  # (S,)
    return (ts[:, None] + gap[:, None] * frac[None]).reshape(-1).to(timestamps.dtype)


@runtime_checkable
class ObjectTracker(Protocol):
    """An object stage (e.g. `vrp.models.tracking.ObjectStage`): frames (F, 3, H, W) uint8 -> tracks (F, K, 4) xyxy in
    [0, 1], NaN where an object is not seen; row k is one object in every frame. ``short_side``: the frames' shorter
    side it wants (None: as decoded)."""

    short_side: int | None

    def __call__(self, frames: torch.Tensor) -> torch.Tensor: ...


def rows_at(tracks: torch.Tensor, frame_times: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tracks (F, K, 4) at ``frame_times`` (F,) seconds -> boxes (R, K, 4) and mask (R, K) at ``times`` (R,):
    interpolated between the frames around each time (`interpolate_frames`; the first frame before it starts); rows past the last frame's time plus one frame
    interval are masked. With no track at all, one masked box per row, so that every clip has K >= 1."""
    if tracks.shape[1] == 0:
        return torch.zeros(len(times), 1, 4), torch.zeros(len(times), 1, dtype=torch.bool)
    ft = frame_times.double()
    i0 = (torch.searchsorted(ft, times.double() + 1e-6, right=True) - 1).clamp(min=0)
    i1 = (i0 + 1).clamp(max=len(ft) - 1)
    span = (ft[i1] - ft[i0]).clamp(min=1e-9)
    pos = i0 + ((times.double() - ft[i0]) / span).clamp(0, 1) * (i1 > i0)  # (R,) fractional frame positions
    step = frame_times.diff().median() if len(frame_times) > 1 else frame_times.new_tensor(float("inf"))
    boxes = interpolate_frames(tracks, pos)
    mask = ~boxes.isnan().any(-1) & (times <= frame_times[-1] + step)[:, None]
    return boxes.nan_to_num(0.0), mask
