"""Object detectors: frames -> per-frame boxes and scores, the first half of the object stage (`vrp.models.tracking`).

Two implementations of `ObjectDetector`:
- `CenterDetector`: the embedded detector, a `CenterNet` loaded by path (``config.json`` + ``model.safetensors``) like
  the other embedded backbones. `CenterNet` is a small class-agnostic CenterNet (Zhou et al., 2019: objects as points;
  a centre heatmap plus size and sub-cell offset regressed at each centre) built from a config and trained by `vrp
  prepare --detector-steps N` on TRAIN frames with their boxes as labels, as a detector pretrained on a labelled
  dataset would be.
- `TorchvisionDetector`: any torchvision detection architecture (Faster R-CNN, RetinaNet, FCOS, SSD, ...) built by
  name and loaded from a local weights file, for real video.

Boxes are xyxy in [0, 1] of the frame in both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class Detections(NamedTuple):
    boxes: torch.Tensor  # (N, 4) xyxy in [0, 1]
    scores: torch.Tensor  # (N,)


@runtime_checkable
class ObjectDetector(Protocol):
    """frames (F, 3, H, W) float in [0, 1] -> one `Detections` per frame."""

    def detect(self, frames: torch.Tensor) -> list[Detections]: ...


def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def gaussian_radius(size: torch.Tensor) -> torch.Tensor:
    """(N, 2) box width, height in cells -> (N,) the heatmap's Gaussian sigma (a third of the smaller half-side,
    at least half a cell)."""
    return (size.amin(-1) / 6).clamp(min=0.5)


class CenterNet(nn.Module):
    """Class-agnostic CenterNet: (F, 3, H, W) in [0, 1] -> heatmap logits (F, 1, h, w), size (F, 2, h, w) and offset
    (F, 2, h, w) at ``stride`` (h = H / stride). Frames are resized to ``image_size`` first.

    A stem of two stride-2 convolutions, then ``dilations`` 3x3 convolutions at stride 4 (the dilations widen the
    receptive field to the object's extent), then three 1x1 heads. Decoding keeps the local maxima of the heatmap
    (3x3 max-pool) above ``score_threshold``, at most ``max_detections`` per frame.
    """

    def __init__(
        self,
        *,
        image_size: int = 128,
        width: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 1),
        score_threshold: float = 0.3,
        max_detections: int = 16,
    ):
        super().__init__()
        self.config = {
            "image_size": image_size,
            "width": width,
            "dilations": list(dilations),
            "score_threshold": score_threshold,
            "max_detections": max_detections,
        }
        self.image_size, self.stride = image_size, 4
        self.score_threshold, self.max_detections = score_threshold, max_detections
        layers = [_block(3, width // 2, 2), _block(width // 2, width, 2)]
        layers += [_block(width, width, dilation=d) for d in dilations]
        self.body = nn.Sequential(*layers)
        self.heatmap = nn.Conv2d(width, 1, 1)
        self.size = nn.Conv2d(width, 2, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # sigmoid = 0.1: the focal loss's prior for rare positives

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CenterNet:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no detector at {path} (config.json missing); build it with `python -m lab prepare --detector-steps N`"
            )
        config = json.loads((path / "config.json").read_text())
        model = cls(**{k: tuple(v) if k == "dilations" else v for k, v in config.items()})
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = frames.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        x = self.body((x - 0.5) / 0.5)  # (F, width, h, w)
        return self.heatmap(x), self.size(x), self.offset(x)

    def targets(self, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per frame (N_f, 4) xyxy in [0, 1] -> heatmap (F, 1, h, w) of Gaussians at the centres, and for the centre
        cells: their flat index (M,), frame (M,), and size + offset targets (M, 4) in cells."""
        h = w = self.image_size // self.stride
        heat = torch.zeros(len(boxes), 1, h, w)
        ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        index, frame, reg = [], [], []
        for f, b in enumerate(boxes):
            if not len(b):
                continue
            cells = b * torch.tensor([w, h, w, h], dtype=b.dtype)
            centre, size = (cells[:, :2] + cells[:, 2:]) / 2, cells[:, 2:] - cells[:, :2]
            sigma = gaussian_radius(size)
            g = torch.exp(
                -((xs[None] - centre[:, 0, None, None] + 0.5) ** 2 + (ys[None] - centre[:, 1, None, None] + 0.5) ** 2)
                / (2 * sigma[:, None, None] ** 2)
            )  # (N, h, w): cell (y, x) has its centre at (x + 0.5, y + 0.5)
            heat[f, 0] = g.amax(0)
            cell = centre.floor().clamp(0, w - 1)
            heat[f, 0, cell[:, 1].long(), cell[:, 0].long()] = 1.0
            index.append((cell[:, 1] * w + cell[:, 0]).long())
            frame.append(torch.full((len(b),), f))
            reg.append(torch.cat([size, centre - cell], dim=-1))
        if not index:
            return heat, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)
        return heat, torch.cat(index), torch.cat(frame), torch.cat(reg)

    def loss(self, frames: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """CenterNet's loss: penalty-reduced focal loss on the heatmap + L1 on size (x 0.1) and offset at the
        centres. frames (F, 3, H, W) in [0, 1]; boxes one (N_f, 4) xyxy tensor per frame."""
        heat_logits, size, offset = self(frames)
        heat, index, frame, reg = (t.to(frames.device) for t in self.targets(boxes))
        p = heat_logits.sigmoid().clamp(1e-4, 1 - 1e-4)
        pos = heat.eq(1).float()
        neg = (1 - pos) * (1 - heat) ** 4
        focal = -(pos * (1 - p) ** 2 * p.log() + neg * p**2 * (1 - p).log()).sum() / pos.sum().clamp(min=1)
        if not len(index):
            return focal
        F_, _, h, w = size.shape
        pred = torch.cat([size, offset], dim=1).flatten(2)[frame, :, index]  # (M, 4)
        return focal + 0.1 * (pred[:, :2] - reg[:, :2]).abs().mean() + (pred[:, 2:] - reg[:, 2:]).abs().mean()

    @torch.no_grad()
    def detect(self, frames: torch.Tensor) -> list[Detections]:
        heat_logits, size, offset = self(frames)
        heat = heat_logits.sigmoid()
        F_, _, h, w = heat.shape
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)  # (F, 1, h, w): local maxima
        scores, index = peaks.flatten(1).topk(min(self.max_detections, h * w), dim=1)  # (F, M)
        out = []
        for f in range(F_):
            wh = size[f].flatten(1)[:, index[f]].T  # (M, 2) in cells
            keep = (scores[f] >= self.score_threshold) & (wh > 0).all(-1)  # a box of no area is no detection
            idx, wh = index[f][keep], wh[keep]
            cy, cx = (idx // w).float(), (idx % w).float()
            off = offset[f].flatten(1)[:, idx].T
            centre = torch.stack([cx, cy], dim=-1) + off
            b = torch.cat([centre - wh / 2, centre + wh / 2], dim=-1) / torch.tensor([w, h, w, h])
            out.append(Detections(b.clamp(0, 1), scores[f][keep]))
        return out


class CenterDetector(nn.Module):
    """The embedded detector: a `CenterNet` saved by `python -m lab prepare --detector-steps N`, loaded from ``path``;
    ``score_threshold`` overrides the saved one."""

    def __init__(self, path: str, *, score_threshold: float | None = None):
        super().__init__()
        self.net = CenterNet.from_pretrained(path)
        if score_threshold is not None:
            self.net.score_threshold = score_threshold

    def detect(self, frames: torch.Tensor) -> list[Detections]:
        return self.net.detect(frames)


class TorchvisionDetector(nn.Module):
    """A torchvision detection model (``torchvision.models.get_model(architecture)``, e.g.
    ``fasterrcnn_mobilenet_v3_large_fpn``, ``retinanet_resnet50_fpn``, ``fcos_resnet50_fpn``) built without
    downloading anything and loaded from a local weights file (a ``state_dict`` saved by ``torch.save`` or as
    safetensors). Detections with a score below ``score_threshold`` are dropped, and with ``labels`` set only those
    class ids are kept; at most ``max_detections`` per frame."""

    def __init__(
        self,
        architecture: str,
        weights: str,
        *,
        num_classes: int = 91,
        score_threshold: float = 0.5,
        labels: list[int] | None = None,
        max_detections: int = 16,
    ):
        super().__init__()
        import torchvision

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"detector weights {path} do not exist; save a torchvision detection model's state_dict there "
                f"(e.g. torchvision.models.get_model({architecture!r}, weights=...).state_dict())"
            )
        self.model = torchvision.models.get_model(
            architecture, weights=None, weights_backbone=None, num_classes=num_classes
        )
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
        self.model.load_state_dict(state)
        self.model.eval()
        self.score_threshold, self.max_detections = score_threshold, max_detections
        self.labels = None if labels is None else set(labels)

    @torch.no_grad()
    def detect(self, frames: torch.Tensor) -> list[Detections]:
        H, W = frames.shape[-2:]
        scale = torch.tensor([W, H, W, H], dtype=torch.float32)
        out = []
        for result in self.model.eval()(list(frames.float())):
            keep = result["scores"] >= self.score_threshold
            if self.labels is not None:
                keep &= torch.tensor([int(label) in self.labels for label in result["labels"]], dtype=torch.bool)
            boxes, scores = result["boxes"][keep], result["scores"][keep]
            order = scores.argsort(descending=True)[: self.max_detections]
            out.append(Detections((boxes[order].cpu() / scale).clamp(0, 1), scores[order].cpu()))
        return out
