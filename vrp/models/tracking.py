"""The object stage: a detector (`vrp.models.detection`) finds objects in each frame, a tracker links them into tracks.

`ObjectStage(detector, tracker)` maps frames (F, 3, H, W) uint8 to tracks (F, K, 4): row k of every frame is the same
object (NaN where it was not seen), K <= ``max_objects`` — the layout of a boxes file (`data_modules.sources.boxes`),
which object-centric fusions read. `vrp track` runs it over a data split and writes such a file; the data layer runs
it on the fly for a video that has none (`vrp ask`, `vrp predict`, the lmms-eval adapter).

`SortTracker` is SORT (Bewley et al., 2016) with DeepSORT's appearance term (Wojke et al., 2017), kept small: each
track's box is predicted forward at constant velocity, every (track, detection) pair costs ``1 - IoU`` of the
prediction and the detection plus ``appearance_weight`` x the distance between their mean colours, the Hungarian
algorithm matches at the least total cost (pairs above ``max_cost`` stay unmatched), an unmatched detection starts a
track and a track unmatched for more than ``max_age`` frames ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_iou

from vrp.models.detection import Detections, ObjectDetector


def box_colours(frame: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """frame (3, H, W) float in [0, 1], boxes (N, 4) xyxy in [0, 1] -> (N, 3): the mean colour of each box's central
    half (the appearance descriptor the tracker compares; the border is mostly background)."""
    H, W = frame.shape[-2:]
    out = frame.new_zeros(len(boxes), 3)
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy, hw, hh = (x1 + x2) / 2 * W, (y1 + y2) / 2 * H, (x2 - x1) / 4 * W, (y2 - y1) / 4 * H
        xa, xb = int(max(0, min(W - 1, cx - hw))), int(max(1, min(W, cx + hw + 1)))
        ya, yb = int(max(0, min(H - 1, cy - hh))), int(max(1, min(H, cy + hh + 1)))
        out[n] = frame[:, ya:yb, xa:xb].reshape(3, -1).mean(-1)
    return out


@dataclass
class Track:
    boxes: dict[int, torch.Tensor]  # frame index -> (4,) xyxy
    colour: torch.Tensor  # (3,) running mean colour
    velocity: torch.Tensor = field(default_factory=lambda: torch.zeros(4))  # per frame
    last: int = 0  # the frame of the last matched detection

    def predict(self, frame: int) -> torch.Tensor:
        return self.boxes[self.last] + self.velocity * (frame - self.last)


class SortTracker:
    """Detections per frame (and their colours) -> tracks; see the module docstring. ``min_length``: a track seen in
    fewer frames is dropped (a one-frame false positive), unless the video has fewer frames."""

    def __init__(
        self,
        *,
        appearance_weight: float = 2.0,
        max_cost: float = 1.3,
        max_age: int = 4,
        min_length: int = 2,
        momentum: float = 0.5,
    ):
        self.appearance_weight, self.max_cost, self.max_age = appearance_weight, max_cost, max_age
        self.min_length, self.momentum = min_length, momentum

    def __call__(self, detections: list[Detections], colours: list[torch.Tensor]) -> list[Track]:
        active: list[Track] = []
        done: list[Track] = []
        for f, (det, colour) in enumerate(zip(detections, colours)):
            matched_tracks, matched_dets = set(), set()
            if active and len(det.boxes):
                pred = torch.stack([t.predict(f) for t in active])  # (A, 4)
                cost = 1 - box_iou(pred, det.boxes).nan_to_num(0.0)  # (A, N); a zero-area box overlaps nothing
                cost = cost + self.appearance_weight * torch.cdist(torch.stack([t.colour for t in active]), colour)
                rows, cols = linear_sum_assignment(cost.numpy())
                for i, j in zip(rows.tolist(), cols.tolist()):
                    if cost[i, j] > self.max_cost:
                        continue
                    t = active[i]
                    box = det.boxes[j]
                    step = (box - t.boxes[t.last]) / (f - t.last)
                    t.velocity = step if len(t.boxes) == 1 else self.momentum * t.velocity + (1 - self.momentum) * step
                    t.colour = self.momentum * t.colour + (1 - self.momentum) * colour[j]
                    t.boxes[f], t.last = box, f
                    matched_tracks.add(i)
                    matched_dets.add(j)
            still = []
            for i, t in enumerate(active):
                (still if i in matched_tracks or f - t.last <= self.max_age else done).append(t)
            active = still
            for j in range(len(det.boxes)):
                if j not in matched_dets:
                    active.append(Track({f: det.boxes[j]}, colour[j].clone(), last=f))
        shortest = min(self.min_length, len(detections))  # a one-frame video's objects are seen once
        return [t for t in done + active if len(t.boxes) >= shortest]


class ObjectStage(nn.Module):
    """frames (F, 3, H, W) uint8 -> tracks (F, K, 4) xyxy in [0, 1], NaN where the object was not detected.

    The ``max_objects`` tracks seen in the most frames are kept, ordered by the frame they start in and then from
    left to right: the k-th row is one object throughout, as object-centric fusions expect. The detector runs on
    ``batch_frames`` frames at a time and never trains (its parameters are frozen); the data layer decodes the frames
    it tracks at ``short_side`` (None: as stored)."""

    def __init__(
        self,
        detector: nn.Module,
        tracker: SortTracker | None = None,
        *,
        max_objects: int = 5,
        batch_frames: int = 64,
        short_side: int | None = 320,
    ):
        super().__init__()
        if not isinstance(detector, ObjectDetector):
            raise TypeError(f"{type(detector).__name__} is not an object detector (vrp.models.detection)")
        self.detector = detector.requires_grad_(False).eval()
        self.tracker = tracker or SortTracker()
        self.max_objects, self.batch_frames, self.short_side = max_objects, batch_frames, short_side

    def train(self, mode: bool = True) -> ObjectStage:  # the detector stays in eval mode (batch norm statistics)
        return super().train(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (F, 3, H, W) uint8; got {tuple(frames.shape)}")
        images = frames.float() / 255
        detections: list[Detections] = []
        for chunk in images.split(self.batch_frames):
            detections += self.detector.detect(chunk)
        colours = [box_colours(image, d.boxes) for image, d in zip(images, detections)]
        tracks = self.tracker(detections, colours)
        tracks.sort(key=lambda t: -len(t.boxes))
        tracks = sorted(tracks[: self.max_objects], key=lambda t: (min(t.boxes), float(t.boxes[min(t.boxes)][0])))
        out = torch.full((len(frames), len(tracks), 4), float("nan"))
        for k, t in enumerate(tracks):
            for f, box in t.boxes.items():
                out[f, k] = box
        return out
