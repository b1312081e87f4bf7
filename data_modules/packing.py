"""Padding-free packing of a batch's LLM sequences, and the per-sample token budget (docs/packing.md).

`Packing` (``packing: {max_tokens: N}`` on both datamodules): the collator plans, for each batch, where every sample's
LLM sequence (its text with its visual tokens in place) goes in rows of at most N tokens, first-fit over the samples
longest first (`first_fit`); the model then lays the sequences out that way, position ids restarting per sample and
attention kept inside each sample (`vrp.models.VideoReasoner.build_inputs` / `CausalLM.forward`). The batch's samples
stay the same, so every loss equals the unpacked batch's; only the padding the LLM computes on goes away.

Token-budget batches (``packing: {max_tokens: N, rows: R}``, training loaders of map-style sources): a batch is no
longer ``batch_size`` samples but as many as fill R rows of N tokens (`budget_rows` plans the epoch's rows,
`data_modules.batching.TokenBudgetSampler` deals them out), so short samples give more samples per step.

`TokenBudget` (``token_budget: {...}``): ``max_visual_tokens`` caps a sample's frames x visual tokens per frame (the
fusion's output tokens over the clip's frames, which the model tells the datamodule): a longer clip gets fewer, evenly
spread real frames (fps sampling: a lower rate over the whole window, never a cut end); ``max_tokens`` bounds a
sample's whole LLM sequence (text + visual tokens); one over it is skipped (counted as ``skipped/over_budget``, with
its key in the log) or, with ``overflow: truncate``, its text is cut at the end to fit (logged with its key; a
prompt that alone does not fit is skipped).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal, Sequence


@dataclass(frozen=True)
class Packing:
    """``max_tokens``: the most LLM tokens (text + visual) one packed row holds. A sample longer than that gets a row
    of its own (never cut: bound samples with `TokenBudget.max_tokens`). ``rows``: token-budget batches, each
    training batch holding as many samples as fill ``rows`` rows of ``max_tokens`` (the training loader's
    ``batch_size`` is then unused; evaluation keeps ``eval_batch_size``); None: ``batch_size`` samples per batch."""

    max_tokens: int
    rows: int | None = None  # token-budget batches: R rows of max_tokens per training batch (None: batch_size)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"packing.max_tokens must be >= 1, got {self.max_tokens}")
        if self.rows is not None and self.rows < 1:
            raise ValueError(
                f"packing.rows must be >= 1 (rows of max_tokens per training batch) or null (batch_size samples "
                f"per batch), got {self.rows}"
            )


@dataclass(frozen=True)
class TokenBudget:
    """Per-sample bounds; None leaves that bound off. ``overflow``: what happens to a sample over ``max_tokens``
    ("skip": dropped from its batch and counted; "truncate": the end of its text cut to fit, logged)."""

    max_visual_tokens: int | None = None
    max_tokens: int | None = None
    overflow: Literal["skip", "truncate"] = "skip"

    def __post_init__(self) -> None:
        for name in ("max_visual_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"token_budget.{name} must be >= 1 or null, got {value}")
        if self.overflow not in ("skip", "truncate"):
            raise ValueError(f"token_budget.overflow must be 'skip' or 'truncate', got {self.overflow!r}")

    def max_frames(self, num_frames: int, tokens_per_frame: float) -> int:
        """The most real frames a clip may keep: ``num_frames``, lowered so frames x ``tokens_per_frame`` fits
        ``max_visual_tokens`` (0: not even one frame fits)."""
        if self.max_visual_tokens is None or tokens_per_frame <= 0:
            return num_frames
        return min(num_frames, int(self.max_visual_tokens // tokens_per_frame))


@dataclass(frozen=True)
class PackPlan:
    """Where each sample's sequence goes: ``row[i]``, starting at ``offset[i]``; ``rows`` x ``width`` tokens in all
    (``width``: the fullest row's tokens, at most ``max_tokens`` unless one sample is longer)."""

    row: list[int]
    offset: list[int]
    rows: int
    width: int


def first_fit(lengths: list[int], max_tokens: int) -> PackPlan:
    """First-fit decreasing: samples longest first (ties in batch order), each into the first row with room."""
    if not lengths:
        return PackPlan([], [], 0, 0)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    fill: list[int] = []
    row, offset = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        n = lengths[i]
        r = next((r for r, used in enumerate(fill) if used + n <= max_tokens), len(fill))
        if r == len(fill):
            fill.append(0)
        row[i], offset[i] = r, fill[r]
        fill[r] += n
    return PackPlan(row, offset, len(fill), max(fill))


def next_fit(lengths: list[int], max_tokens: int) -> PackPlan:
    """Next-fit in batch order: each sample in the current row, or a new row when it does not fit. It lays a
    token-budget batch (`budget_rows`, dealt row after row) out in at most its planned rows: greedy cuts give the
    fewest rows of any layout that keeps the order."""
    if not lengths:
        return PackPlan([], [], 0, 0)
    row, offset, fill = [], [], [0]
    for n in lengths:
        if fill[-1] and fill[-1] + n > max_tokens:
            fill.append(0)
        row.append(len(fill) - 1)
        offset.append(fill[-1])
        fill[-1] += n
    return PackPlan(row, offset, len(fill), max(fill))


def budget_rows(order: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """The rows of one epoch: best-fit decreasing over every sample of ``order`` (longest first, equal lengths in
    ``order``'s order), each into the row with the least room that still fits it (ties: the older row); a sample
    longer than ``max_tokens`` gets a row of its own. Each row lists its samples in placement order.

    The number of rows depends on the lengths only, never on ``order``: every epoch has as many, which Lightning
    (counting an epoch's batches once) needs; ``order`` (the epoch's shuffle) decides which of the samples of one
    length share a row."""
    rank = {i: k for k, i in enumerate(order)}
    rows: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, row id) of the rows with room, sorted
    for i in sorted(order, key=lambda i: (-lengths[i], rank[i])):
        n = lengths[i]
        k = bisect.bisect_left(rooms, (n, -1))
        if k < len(rooms):
            room, r = rooms.pop(k)
        else:
            room, r = max_tokens, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - n > 0:
            bisect.insort(rooms, (room - n, r))
    return rows
