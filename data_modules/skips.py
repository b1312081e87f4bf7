"""Bad-sample accounting: skip, count, log, and stop when too much of the data is bad.

Counts live in a shared-memory tensor with one row per DataLoader worker (row 0 = main process), so counts made in
worker processes are visible to the main process without any message passing and without races.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)

REASONS = ("missing_file", "decode_error", "empty_text", "malformed", "bad_boxes", "other", "over_budget")


class BadSample(Exception):
    """Raised by readers for one sample that must be skipped; ``reason`` is one of ``REASONS``."""

    def __init__(self, key: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; use one of {REASONS}")
        self.key, self.reason, self.detail = key, reason, detail
        super().__init__(f"{key}: {reason}: {detail}")


class TooManyBadSamples(RuntimeError):
    pass


PHASES = ("rows", "samples")  # rows a source reads from its file(s); samples decoded (map-style) or streamed


class SkipCounter:
    """Counts good and skipped items per reason, in two phases: the rows a source reads when it loads (`load`) and
    the samples decoded or streamed afterwards. The budget is per phase: more than ``max_bad_fraction`` of what
    that phase has read so far is an error, once it has read at least ``min_samples`` items (so a few early
    failures do not stop a run). Rows are checked when a file has been read, since good rows are only counted then;
    samples at every skip.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_samples: int = 100, max_workers: int = 64) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        # (W+1, phase, 1+R): good count, then one count per reason
        self.counts = torch.zeros(max_workers + 1, len(PHASES), 1 + len(REASONS), dtype=torch.int64).share_memory_()
        self._phase = PHASES.index("samples")
        self._last = ""

    def _row(self) -> int:
        info = get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self.counts.shape[0]:
            raise RuntimeError(f"SkipCounter holds {self.counts.shape[0] - 1} worker rows; raise max_workers")
        return row

    def good(self, n: int = 1) -> None:
        self.counts[self._row(), self._phase, 0] += n

    def skip(self, key: str, reason: str, detail: str = "") -> None:
        """Count and log one skipped item; for samples, then enforce the bad-fraction limit."""
        self.counts[self._row(), self._phase, 1 + REASONS.index(reason)] += 1
        log.warning("skipping sample %s: %s: %s", key, reason, detail)
        self._last = f"{key}: {reason}: {detail}"
        if PHASES[self._phase] == "samples":
            self.check("samples")

    def load(self, source: Any, what: str) -> list:
        """``source.load(self)``, its bad rows counted as rows; the budget applies once the file is read."""
        self._phase = PHASES.index("rows")
        try:
            records = source.load(self)
        finally:
            self._phase = PHASES.index("samples")
        self.counts[0, PHASES.index("rows"), 0] += len(records)
        self.check("rows", f" from {what}")
        return records

    def check(self, phase: str, where: str = "") -> None:
        """`TooManyBadSamples` when more than ``max_bad_fraction`` of the ``phase``'s items read so far were bad."""
        totals = self.counts[:, PHASES.index(phase)].sum(0)
        bad, seen = int(totals[1:].sum()), int(totals.sum())
        if seen >= self.min_samples and bad > self.max_bad_fraction * seen:
            raise TooManyBadSamples(
                f"{bad} of {seen} {phase} read{where} were bad (> max_bad_fraction={self.max_bad_fraction}); last: "
                f"{self._last}. Fix the data or raise max_bad_fraction."
            )

    def totals(self) -> dict[str, int]:
        """``{"good": n, "skipped": n, "skipped/<reason>": n, ..., "rows": n}``: plain ints, ready for ``log_dict``;
        ``good`` counts samples, ``skipped`` both phases, ``rows`` the rows sources read."""
        by_phase = self.counts.sum(0)  # (phase, 1+R)
        t = by_phase.sum(0).tolist()
        out = {"good": int(by_phase[PHASES.index("samples"), 0]), "skipped": sum(t[1:])}
        out.update({f"skipped/{r}": n for r, n in zip(REASONS, t[1:])})
        out["rows"] = int(by_phase[PHASES.index("rows")].sum())
        return out

    def state_dict(self) -> dict[str, list]:
        return {"totals": self.counts.sum(0).tolist()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        totals = torch.tensor(state["totals"], dtype=torch.int64)
        if totals.shape[-1] < self.counts.shape[-1]:  # written before a reason was added (at the end): zeros
            totals = torch.nn.functional.pad(totals, (0, self.counts.shape[-1] - totals.shape[-1]))
        self.counts.zero_()
        if totals.dim() == 1:  # written before rows and samples were counted apart: all samples
            self.counts[0, PHASES.index("samples")] = totals
        else:
            self.counts[0] = totals
