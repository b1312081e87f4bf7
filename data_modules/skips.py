"""Bad-sample accounting: skip, count, log, and stop when too much of the data is bad.

Counts live in a shared-memory tensor with one row per DataLoader worker (row 0 = main process), so counts made in
worker processes are visible to the main process without any message passing and without races.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)

REASONS = ("missing_file", "decode_error", "empty_text", "malformed", "bad_boxes", "other")


class BadSample(Exception):
    """Raised by readers for one sample that must be skipped; ``reason`` is one of ``REASONS``."""

    def __init__(self, key: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; use one of {REASONS}")
        self.key, self.reason, self.detail = key, reason, detail
        super().__init__(f"{key}: {reason}: {detail}")


class TooManyBadSamples(RuntimeError):
    pass


class SkipCounter:
    """Counts good and skipped samples per reason; raises once the bad fraction exceeds ``max_bad_fraction``.

    The check only starts after ``min_samples`` samples so that one early failure does not stop a run.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_samples: int = 20, max_workers: int = 64) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.counts = torch.zeros(max_workers + 1, 1 + len(REASONS), dtype=torch.int64).share_memory_()  # (W+1, 1+R)

    def _row(self) -> int:
        info = get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self.counts.shape[0]:
            raise RuntimeError(f"SkipCounter holds {self.counts.shape[0] - 1} worker rows; raise max_workers")
        return row

    def good(self) -> None:
        self.counts[self._row(), 0] += 1

    def skip(self, key: str, reason: str, detail: str = "") -> None:
        """Count and log one skipped sample, then enforce the bad-fraction limit."""
        self.counts[self._row(), 1 + REASONS.index(reason)] += 1
        log.warning("skipping sample %s: %s: %s", key, reason, detail)
        totals = self.counts.sum(0)
        bad, seen = int(totals[1:].sum()), int(totals.sum())
        if seen >= self.min_samples and bad > self.max_bad_fraction * seen:
            raise TooManyBadSamples(
                f"{bad} of {seen} samples were bad (> max_bad_fraction={self.max_bad_fraction}); last: {key}: "
                f"{reason}: {detail}. Fix the data or raise max_bad_fraction."
            )

    def totals(self) -> dict[str, int]:
        """``{"good": n, "skipped": n, "skipped/<reason>": n, ...}``: plain ints, ready for ``log_dict``."""
        t = self.counts.sum(0).tolist()
        out = {"good": t[0], "skipped": sum(t[1:])}
        out.update({f"skipped/{r}": n for r, n in zip(REASONS, t[1:])})
        return out

    def state_dict(self) -> dict[str, list[int]]:
        return {"totals": self.counts.sum(0).tolist()}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        self.counts.zero_()
        self.counts[0] = torch.tensor(state["totals"], dtype=torch.int64)
