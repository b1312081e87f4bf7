"""The tracker and the object stage: ids kept through a crossing written by hand, tracks that start and end, a
one-frame false positive dropped, the tracks' layout; and the tracking scores against ground truth."""

from __future__ import annotations

import math

import torch

from vrp.models.detection import Detections
from vrp.models.tracking import ObjectStage, SortTracker, box_colours
from vrp.scoring.detection import score_tracks

SIZE = 64
RED, BLUE = (230, 40, 40), (40, 60, 230)


class ListDetector(torch.nn.Module):
    """Hands out the given boxes of each frame in turn (a detector that is right, in a shuffled order)."""

    def __init__(self, per_frame: list[list[list[float]]]):
        super().__init__()
        self.per_frame, self.next = per_frame, 0

    def detect(self, frames: torch.Tensor) -> list[Detections]:
        out = []
        for _ in frames:
            boxes = torch.tensor(self.per_frame[self.next], dtype=torch.float32).reshape(-1, 4)
            out.append(Detections(boxes, torch.ones(len(boxes))))
            self.next += 1
        return out


def draw(objects_per_frame: list[list[tuple[list[float], tuple[int, int, int]]]]) -> torch.Tensor:
    """(F, 3, SIZE, SIZE) uint8 frames with a filled box of its colour per object."""
    frames = torch.full((len(objects_per_frame), 3, SIZE, SIZE), 30, dtype=torch.uint8)
    for f, objects in enumerate(objects_per_frame):
        for (x1, y1, x2, y2), colour in objects:
            ys, xs = slice(int(y1 * SIZE), int(y2 * SIZE)), slice(int(x1 * SIZE), int(x2 * SIZE))
            frames[f, :, ys, xs] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    return frames


def box(cx: float, cy: float, r: float = 0.1) -> list[float]:
    return [cx - r, cy - r, cx + r, cy + r]


def test_ids_are_kept_through_a_crossing():
    # red moves right, blue moves left on the same line: their boxes overlap in the middle frames
    frames_objects = [[(box(0.2 + 0.08 * f, 0.5), RED), (box(0.8 - 0.08 * f, 0.5), BLUE)] for f in range(9)]
    per_frame = [
        [b for b, _ in reversed(objs)] if f % 2 else [b for b, _ in objs] for f, objs in enumerate(frames_objects)
    ]
    stage = ObjectStage(ListDetector(per_frame), max_objects=5)
    tracks = stage(draw(frames_objects))  # (F, K, 4)
    assert tracks.shape == (9, 2, 4)
    red = torch.tensor([box(0.2 + 0.08 * f, 0.5) for f in range(9)])
    k = int((tracks[0, :, 0] - red[0, 0]).abs().argmin())
    seen = ~tracks[:, k].isnan().any(-1)
    # the same row holds red before, during and after the crossing; at frame 4 blue is drawn over it (occluded)
    assert seen.tolist() == [True] * 4 + [False] + [True] * 4
    assert torch.allclose(tracks[seen, k], red[seen])
    truth = torch.stack([red, torch.tensor([box(0.8 - 0.08 * f, 0.5) for f in range(9)])], dim=1)
    assert score_tracks(tracks, truth).id_switches == 0
    swapped = tracks.clone()
    swapped[5:] = tracks[5:].flip(1)
    score = score_tracks(swapped, truth)
    assert score.id_switches == 2 and score.true_positives == 17 and score.false_negatives == 1  # red occluded once


def test_tracks_start_and_end_with_objects_that_enter_and_leave():
    frames_objects = []
    for f in range(8):
        objs = [(box(0.3, 0.2 + 0.05 * f), RED)] if f < 5 else []  # red leaves after frame 4
        if f >= 3:
            objs.append((box(0.7, 0.8 - 0.05 * f), BLUE))  # blue enters at frame 3
        frames_objects.append(objs)
    per_frame = [[b for b, _ in objs] for objs in frames_objects]
    per_frame[1] = per_frame[1] + [box(0.8, 0.2, 0.05)]  # a one-frame false positive: dropped (min_length 2)
    tracks = ObjectStage(ListDetector(per_frame))(draw(frames_objects))
    present = ~tracks.isnan().any(-1)  # (F, K)
    assert tracks.shape[1] == 2
    assert present[:, 0].tolist() == [True] * 5 + [False] * 3  # ordered by the frame the track starts in
    assert present[:, 1].tolist() == [False] * 3 + [True] * 5


def test_max_objects_keeps_the_longest_tracks_and_no_detection_gives_no_track():
    frames_objects = [
        [(box(0.2, 0.2), RED), (box(0.7, 0.7), BLUE)] + ([(box(0.2, 0.8), BLUE)] if f < 2 else []) for f in range(4)
    ]
    tracks = ObjectStage(ListDetector([[b for b, _ in o] for o in frames_objects]), max_objects=2)(draw(frames_objects))
    assert tracks.shape == (4, 2, 4) and not tracks.isnan().any()  # the 2-frame track is the one left out
    empty = ObjectStage(ListDetector([[] for _ in range(3)]))(draw([[]] * 3))
    assert empty.shape == (3, 0, 4)


def test_colour_descriptor_and_tracker_gating():
    frame = draw([[(box(0.3, 0.3), RED)]])[0].float() / 255
    colour = box_colours(frame, torch.tensor([box(0.3, 0.3)]))
    assert torch.allclose(colour[0], torch.tensor(RED) / 255, atol=1e-6)
    # two far-apart detections of different colours in consecutive frames are two tracks, not one
    dets = [
        Detections(torch.tensor([box(0.2, 0.2)]), torch.ones(1)),
        Detections(torch.tensor([box(0.8, 0.8)]), torch.ones(1)),
    ]
    tracks = SortTracker(min_length=1)(dets, [torch.tensor([[0.9, 0.1, 0.1]]), torch.tensor([[0.1, 0.1, 0.9]])])
    assert len(tracks) == 2
    same = SortTracker(min_length=1)(dets, [torch.tensor([[0.9, 0.1, 0.1]])] * 2)
    assert len(same) == 1 and math.isclose(float(same[0].velocity[0]), 0.6, abs_tol=1e-6)
