"""AdamW over trainable parameters with a linear-warmup cosine schedule (shared by both stages)."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear 0->1 over `warmup_steps`, then cosine 1->`min_lr_ratio` until `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_cosine(
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
) -> dict:
    """Lightning `configure_optimizers` dict. Weight decay skips biases, norms, embeddings of queries (ndim < 2)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters: check the *_mode settings of the model")
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup_steps, total_steps, min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def adamw_cosine_from_hparams(module) -> dict:
    """`adamw_cosine` with a stage module's `lr`, `weight_decay`, `betas`, `warmup_steps`, `min_lr_ratio` hparams and
    the trainer's step count (both stage modules take these same arguments)."""
    hp = module.hparams
    return adamw_cosine(
        module,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        betas=tuple(hp.betas),
        warmup_steps=hp.warmup_steps,
        total_steps=int(module.trainer.estimated_stepping_batches),
        min_lr_ratio=hp.min_lr_ratio,
    )
