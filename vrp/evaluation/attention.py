"""The Q-Former's cross-attention over frames and patches, for heatmaps.

SDPA does not return attention weights, so forward hooks on every `vrp.models.qformer.CrossAttention` record its
inputs (queries, memory, mask) and the weights are recomputed from its own q / k projections:
softmax(q k^T / sqrt(d) + mask), averaged over heads and queries. Only the layers of the fusion's ``vision_qformer``
count: `FrameQFormerFusion.frame_qformer` (one memory of N [+ K object] tokens per real frame) or
`JointQFormerFusion.qformer` (one memory of T * (N [+ K]) tokens, frame-major); object tokens and the video-level
Q-Former are left out.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vrp.models.qformer import CrossAttention
from vrp.models.qformer_fusion import FrameQFormerFusion, JointQFormerFusion


def _weights(module: nn.Module, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B', M) attention of `module` from queries x (B', Q, H) to memory (B', M, Dv), mean over heads and queries."""
    B, Q, H = x.shape
    h = module.num_heads
    d = H // h
    q = module.q(x).view(B, Q, h, d).transpose(1, 2)  # (B', h, Q, d)
    k = module.kv(memory)[..., :H].view(B, -1, h, d).transpose(1, 2)  # (B', h, M, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B', h, Q, M)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1).mean((1, 2))


@torch.no_grad()
def cross_attention_maps(model: nn.Module, batch: dict) -> torch.Tensor:
    """(B, T, gh, gw) attention mass on each patch of each frame (at most 1 per clip; prefix and object tokens
    dropped), averaged over the cross-attention layers that read the vision tokens. Raises if there are none
    (e.g. a linear/MLP connector)."""
    fusion = model.fusion
    if not isinstance(fusion, (FrameQFormerFusion, JointQFormerFusion)):
        raise ValueError(f"{type(fusion).__name__} has no Q-Former cross-attention to visualise")
    per_frame = isinstance(fusion, FrameQFormerFusion)
    calls: list[tuple[nn.Module, tuple]] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: calls.append((mod, args)))
        for m in fusion.vision_qformer.modules()
        if isinstance(m, CrossAttention)
    ]
    device = next(model.parameters()).device
    get = lambda k: batch[k].to(device) if isinstance(batch.get(k), torch.Tensor) else None  # noqa: E731
    try:
        model.encode_video(get("video"), get("frame_mask"), boxes=get("boxes"), box_mask=get("box_mask"))
    finally:
        for hk in hooks:
            hk.remove()
    frame_mask = batch["frame_mask"].bool().cpu()
    B, T = frame_mask.shape
    gh, gw = model.vision.grid
    P = model.vision.num_prefix_tokens
    N = P + gh * gw
    maps = []
    for module, (x, memory, mask) in calls:
        w = _weights(module, x, memory, mask).cpu()  # (B', M)
        if per_frame:  # the frame Q-Former ran on the real frames only: (R, N [+ objects])
            full = w.new_zeros(B * T, N)
            full[frame_mask.flatten()] = w[:, :N]
            w = full.view(B, T, N) / frame_mask.sum(1).clamp_min(1)[:, None, None]
        else:  # joint: (B, T * (N [+ objects])), frame-major
            w = w.view(B, T, -1)[..., :N]
        maps.append(w[..., P:].reshape(B, T, gh, gw))
    return torch.stack(maps).mean(0)
