"""The losses: stage-1 video-text contrastive (ITC) and video-text matching with hard negatives (ITM), and the LM
loss (`lm_loss`) both stages share."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather `x` (B, ...) from every rank along dim 0, keeping gradients to the local slice.

    Returns the gathered tensor (sum of the ranks' B, ...) and the offset of this rank's rows in it. Single process:
    (x, 0). Ranks may hold different B (token-budget batches, `data_modules.batching`): each sends its rows padded to
    the largest B, and the padding is cut out of what comes back.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(n) for n in sizes]  # (world,) rows per rank
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, max(sizes) - x.shape[0]))  # (max B, ...)
    parts = all_gather(padded.contiguous())
    rank = dist.get_rank()
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0), sum(sizes[:rank])


def video_text_similarity(video_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
    """BLIP-2 style similarity: best-matching query per pair.

    video_feat (Bv, Q, E) and text_feat (Bt, E), both L2-normalised -> (Bv, Bt).
    """
    return torch.einsum("vqe,te->vtq", video_feat, text_feat).amax(dim=-1)


def contrastive_loss(
    video_feat: torch.Tensor, text_feat: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of local videos against all ranks' texts and local texts against all ranks' videos.

    video_feat (B, Q, E) and text_feat (B, E) are L2-normalised; `logit_scale` is the log inverse temperature
    (learnable). Returns (loss, local similarity (B, B) unscaled, row = video, column = text) for hard negatives.
    """
    all_video, offset = gather_with_grad(video_feat) if gather else (video_feat, 0)
    all_text, _ = gather_with_grad(text_feat) if gather else (text_feat, 0)
    scale = logit_scale.exp()
    B = video_feat.shape[0]
    sim_v2t = video_text_similarity(video_feat, all_text)  # (B, W*B)
    sim_t2v = video_text_similarity(all_video, text_feat).t()  # (B, W*B)
    targets = torch.arange(B, device=video_feat.device) + offset
    loss = 0.5 * (F.cross_entropy(scale * sim_v2t, targets) + F.cross_entropy(scale * sim_t2v, targets))
    return loss, sim_v2t[:, offset : offset + B]


def sample_hard_negatives(sim: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row of a local (B, B) similarity matrix, draw one negative column with probability softmax(sim),
    never the diagonal (the positive). Rows with B == 1 have no negative: raise, since ITM needs B >= 2."""
    if sim.shape[0] < 2:
        raise ValueError("video-text matching needs at least 2 samples per device batch to draw negatives")
    weights = sim.detach().float().softmax(dim=1) + 1e-6  # (B, B)
    weights.fill_diagonal_(0)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)


def matching_loss(logits: torch.Tensor, num_positive: int) -> torch.Tensor:
    """ITM cross-entropy for logits (P + N, 2) whose first `num_positive` rows are matched pairs (class 1)."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:num_positive] = 1
    return F.cross_entropy(logits, labels)


def lm_loss(model: nn.Module, video_tokens: torch.Tensor, batch: dict) -> torch.Tensor:
    """Causal-LM loss on `batch["labels"]` with the visual tokens (B, Q, D_llm) spliced in at the placeholder; on
    the batch's packed rows when it carries a packing plan (`VideoReasoner.language_model`), the same loss."""
    if "labels" not in batch:
        raise KeyError("the LM loss needs the batch's 'labels'")
    return model.language_model(video_tokens, batch).loss
