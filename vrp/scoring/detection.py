"""Detection and tracking quality against ground-truth boxes: precision / recall at an IoU threshold, and identity
switches (MOT's IDSW: a ground-truth object whose matched track changes between two frames where it is matched).

Both compare tracks (F, K, 4) with the ground truth (F, G, 4), xyxy in [0, 1], NaN where absent; per frame the
predicted and true boxes are matched one-to-one by the Hungarian algorithm on IoU, pairs below ``iou`` unmatched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou


@dataclass
class TrackScore:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    id_switches: int = 0
    objects: int = 0  # ground-truth objects (tracks) seen
    iou_sum: float = 0.0  # over the true positives

    def add(self, other: TrackScore) -> TrackScore:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self) -> dict:
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        return {
            "precision": round(tp / max(tp + fp, 1), 4),
            "recall": round(tp / max(tp + fn, 1), 4),
            "mean_iou": round(self.iou_sum / max(tp, 1), 4),
            "id_switches": self.id_switches,
            "id_switches_per_track": round(self.id_switches / max(self.objects, 1), 4),
            "objects": self.objects,
            "boxes": tp + fn,
            "missed": fn,
            "false_positives": fp,
        }


def match(pred: torch.Tensor, truth: torch.Tensor, iou: float) -> list[tuple[int, int, float]]:
    """(P, 4), (G, 4) -> (pred, truth, IoU) of the max-IoU one-to-one matching, pairs with IoU >= ``iou``."""
    if not len(pred) or not len(truth):
        return []
    overlap = box_iou(pred, truth)
    rows, cols = linear_sum_assignment(-overlap.numpy())
    return [(i, j, float(overlap[i, j])) for i, j in zip(rows.tolist(), cols.tolist()) if overlap[i, j] >= iou]


def score_tracks(tracks: torch.Tensor, truth: torch.Tensor, *, iou: float = 0.5) -> TrackScore:
    """Tracks (F, K, 4) against ground truth (F, G, 4), NaN where absent."""
    score = TrackScore(objects=int((~truth.isnan().any(-1)).any(0).sum()))
    last: dict[int, int] = {}  # ground-truth object -> the track it was last matched to
    for f in range(len(truth)):
        p_idx = (~tracks[f].isnan().any(-1)).nonzero().flatten().tolist() if tracks.shape[1] else []
        g_idx = (~truth[f].isnan().any(-1)).nonzero().flatten().tolist()
        pairs = match(tracks[f, p_idx], truth[f, g_idx], iou) if p_idx else []
        score.true_positives += len(pairs)
        score.false_positives += len(p_idx) - len(pairs)
        score.false_negatives += len(g_idx) - len(pairs)
        score.iou_sum += sum(overlap for _, _, overlap in pairs)
        for i, j, _ in pairs:
            k, g = p_idx[i], g_idx[j]
            if g in last and last[g] != k:
                score.id_switches += 1
            last[g] = k
    return score
