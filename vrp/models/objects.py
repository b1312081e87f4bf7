"""Object tokens per frame: RoIAlign over the patch grid when boxes are given, slot attention otherwise.

The tokens have the vision width so they can join the Q-Former's cross-attention memory next to the patch tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from vrp.models.contracts import TokenLayout


def interpolate_embeddings(table: torch.Tensor, length: int) -> torch.Tensor:
    """Learned (n, D) position table -> (length, D), linearly interpolated when length != n."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.T[None], size=length, mode="linear", align_corners=True)[0].T


def roi_features(patches: torch.Tensor, grid: tuple[int, int], boxes: torch.Tensor, roi_size: int) -> torch.Tensor:
    """RoIAlign of boxes over each frame's patch grid: patches (B, T, gh*gw, D), boxes (B, T, K, 4) xyxy in [0, 1]
    -> (B, T, K, D * roi_size**2)."""
    B, T, _, D = patches.shape
    if boxes.shape[:2] != (B, T):
        raise ValueError(
            f"boxes {tuple(boxes.shape)} must have one row per frame of the patches {tuple(patches.shape)}; "
            "boxes with several rows per frame (a datamodule's box_substeps > 1) are read only by TrackFusion"
        )
    gh, gw = grid
    K = boxes.shape[2]
    fmap = patches.reshape(B * T, gh, gw, D).permute(0, 3, 1, 2)  # (B*T, D, gh, gw)
    scale = boxes.new_tensor([gw, gh, gw, gh])
    frame = torch.arange(B * T, device=boxes.device).repeat_interleave(K)[:, None].to(boxes.dtype)
    rois = torch.cat([frame, boxes.reshape(-1, 4) * scale], dim=1)  # (B*T*K, 5): frame index, box in grid units
    pooled = roi_align(fmap, rois, output_size=roi_size, aligned=True)  # (B*T*K, D, r, r)
    return pooled.flatten(1).view(B, T, K, -1)


class SlotAttention(nn.Module):
    """Slot attention (Locatello et al., 2020) with learned, deterministic initial slots: (B, N, D) -> (B, K, D)."""

    def __init__(self, dim: int, num_slots: int, *, iters: int = 3, hidden: int | None = None, eps: float = 1e-8):
        super().__init__()
        self.iters, self.eps, self.scale = iters, eps, dim**-0.5
        self.slots = nn.Parameter(torch.randn(1, num_slots, dim) * dim**-0.5)
        self.norm_in, self.norm_slots, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        k, v = self.kv(self.norm_in(x)).chunk(2, dim=-1)  # (B, N, D)
        slots = self.slots.expand(B, -1, -1)
        for _ in range(self.iters):
            prev = slots
            logits = torch.einsum("bkd,bnd->bkn", self.q(self.norm_slots(slots)), k) * self.scale
            attn = logits.softmax(dim=1) + self.eps  # slots compete for each input token
            attn = attn / attn.sum(dim=-1, keepdim=True)  # weighted mean over tokens
            updates = torch.einsum("bkn,bnd->bkd", attn, v)
            slots = self.gru(updates.reshape(-1, D), prev.reshape(-1, D)).view(B, -1, D)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots


class ObjectTokens(nn.Module):
    """(B, T, N, D) patch tokens (+ optional (B, T, K, 4) xyxy boxes in [0, 1]) -> object tokens (B, T, K, D), mask (B, T, K).

    With boxes: RoIAlign of each box over the (gh, gw) patch grid, flattened and projected, plus a box-coordinate
    embedding. Without: `num_slots` slots per frame from slot attention over that frame's patches. Both get a learned
    time embedding (interpolated when the number of frames differs from `num_frames`).
    """

    def __init__(
        self, layout: TokenLayout, *, num_slots: int = 4, slot_iters: int = 3, roi_size: int = 2, num_frames: int = 8
    ):
        super().__init__()
        self.layout, self.roi_size = layout, roi_size
        vision_width = layout.width
        self.roi_proj = nn.Linear(vision_width * roi_size * roi_size, vision_width)
        self.box_embed = nn.Sequential(nn.Linear(4, vision_width), nn.GELU(), nn.Linear(vision_width, vision_width))
        self.slots = SlotAttention(vision_width, num_slots, iters=slot_iters)
        self.time_embed = nn.Parameter(torch.randn(num_frames, vision_width) * 0.02)

    def forward(
        self, visual: torch.Tensor, boxes: torch.Tensor | None = None, box_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _, D = visual.shape
        gh, gw = self.layout.grid
        patches = self.layout.patches(visual)  # (B, T, gh*gw, D)
        if boxes is None:
            tokens = self.slots(patches.reshape(B * T, gh * gw, D)).view(B, T, -1, D)
            mask = torch.ones(tokens.shape[:3], dtype=torch.bool, device=visual.device)
        else:
            if boxes.shape[:2] != (B, T) or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B={B}, T={T}, K, 4) xyxy in [0, 1]; got {tuple(boxes.shape)}")
            K = boxes.shape[2]
            if box_mask is not None:  # absent boxes may hold NaN or junk
                boxes = boxes.masked_fill(~box_mask.bool()[..., None], 0.0)
            tokens = self.roi_proj(roi_features(patches, self.layout.grid, boxes, self.roi_size)) + self.box_embed(
                boxes
            )
            mask = torch.ones(B, T, K, dtype=torch.bool, device=visual.device) if box_mask is None else box_mask.bool()
        tokens = tokens + interpolate_embeddings(self.time_embed, T)[None, :, None]
        return tokens, mask
