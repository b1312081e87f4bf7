"""The Q-Former's cross-attention over frames and patches, for heatmaps.

SDPA does not return attention weights, so forward hooks on every `vrp.models.qformer.CrossAttention` record its
inputs (queries, memory, mask) and the weights are recomputed from its own q / k projections:
softmax(q k^T / sqrt(d) + mask), averaged over heads and queries. Layers whose memory is the vision tokens are kept:
a per-frame Q-Former (batch folded to B*T, memory N tokens) or a joint one (memory T*N tokens); object tokens
appended after the visual tokens, and the video-level Q-Former's layers, are left out.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
    """(B, T, gh, gw) attention mass on each patch of each frame (summing to ~1 per clip; prefix tokens dropped),
    averaged over the kept cross-attention layers. Raises if the fusion has no such layer (e.g. a connector)."""
    from vrp.models.qformer import CrossAttention

    calls: list[tuple[nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, args)))
             for m in model.fusion.modules() if isinstance(m, CrossAttention)]
    if not hooks:
        raise ValueError(f"{type(model.fusion).__name__} has no Q-Former cross-attention to visualise")
    try:
        device = next(model.parameters()).device
        model.encode_video(batch["video"].to(device), batch["frame_mask"].to(device), boxes=batch.get("boxes"),
                           box_mask=batch.get("box_mask"))
    finally:
        for hk in hooks:
            hk.remove()
    B, T = batch["frame_mask"].shape
    gh, gw = model.vision.grid
    P = model.vision.num_prefix_tokens
    N = P + gh * gw
    maps = []
    for module, (x, memory, mask) in calls:
        w = _weights(module, x, memory, mask)  # (B', M)
        if w.shape[0] == B * T and w.shape[1] >= N:  # per-frame Q-Former: one memory per frame
            w = w[:, :N].reshape(B, T, N) / T
        elif w.shape[0] == B and w.shape[1] >= T * N:  # joint Q-Former: all frames in one memory
            w = w[:, : T * N].reshape(B, T, N)
        else:
            continue
        maps.append(w[..., P:].reshape(B, T, gh, gw))
    if not maps:
        raise ValueError("no cross-attention layer reads the vision tokens directly; cannot map attention to patches")
    return torch.stack(maps).mean(0).cpu()
