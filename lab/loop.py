"""The plain training loop the lab's tools share (stage 0, the probe): shuffled index batches, one clipped
optimiser step each, the mean loss reported every few steps."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import nn


def train_steps(
    loss_of: Callable[[list[int]], torch.Tensor],
    n: int,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    steps: int,
    batch_size: int,
    rng: random.Random,
    log_every: int,
    log: Callable[[int, float], None],
) -> list[float]:
    """``steps`` optimiser steps over batches of ``batch_size`` indices into ``n`` examples (each epoch a new
    permutation drawn from ``rng``), ``loss_of(indices) -> loss``, gradients clipped at norm 1, the scheduler stepped
    after each; every ``log_every`` steps and at the last, ``log(step, mean loss since the last call)``. Returns the
    loss of every step."""
    order: list[int] = []
    losses: list[float] = []
    for step in range(1, steps + 1):
        while len(order) < batch_size:
            order += rng.sample(range(n), n)
        loss = loss_of([order.pop() for _ in range(batch_size)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            recent = losses[-log_every:]
            log(step, sum(recent) / len(recent))
    return losses
