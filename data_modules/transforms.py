"""Clip transforms: one random resized crop (and optional flip) for all frames of a clip, boxes moved with it.

Size and normalisation come from the vision backbone via ``configure_preprocess`` on the datamodules, not from YAML.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vrp.models.constants import CLIP_MEAN, CLIP_STD


class VideoTransform:
    """uint8 (T, C, H, W) -> normalised float (T, C, S, S); boxes (T * S, K, 4) xyxy in [0, 1] (S box rows per frame) follow the same geometry.

    Train: random resized crop (``scale``, ``ratio``) shared by all frames; horizontal flip only if ``hflip`` (off by
    default: direction matters for causal questions). Eval: resize the short side to S, centre crop.
    """

    def __init__(
        self,
        image_size: int = 224,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
        *,
        train: bool = False,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = False,
    ) -> None:
        self.image_size, self.train = image_size, train
        geometry = (
            [v2.RandomResizedCrop(image_size, scale=scale, ratio=ratio, antialias=True)]
            + ([v2.RandomHorizontalFlip()] if hflip else [])
            if train
            else [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        )
        self.geometry = v2.Compose([*geometry, v2.ClampBoundingBoxes()])
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(
        self, frames: torch.Tensor, boxes: torch.Tensor | None = None, box_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        T, _, H, W = frames.shape
        video = tv_tensors.Video(frames)
        if boxes is None:
            return self.normalize(self.geometry(video)).as_subclass(torch.Tensor), None, None
        scale = torch.tensor([W, H, W, H], dtype=torch.float32)  # boxes: (T * S, K, 4), S box rows per frame
        bb = tv_tensors.BoundingBoxes((boxes * scale).reshape(-1, 4), format="XYXY", canvas_size=(H, W))
        video, bb = self.geometry(video, bb)
        h, w = video.shape[-2:]
        out = bb.as_subclass(torch.Tensor).reshape(boxes.shape) / torch.tensor([w, h, w, h], dtype=torch.float32)
        visible = (out[..., 2] > out[..., 0]) & (out[..., 3] > out[..., 1])  # a box cropped away has zero area
        mask = visible if box_mask is None else box_mask & visible
        return self.normalize(video).as_subclass(torch.Tensor), out * mask[..., None], mask
