"""Token-budget batches (``packing: {max_tokens: N, rows: R}``, docs/packing.md): the training loader's batches are
as many samples as fill R rows of N LLM tokens, planned from each sample's known length (its text tokens + Q visual
tokens, no video decoded), instead of ``batch_size`` samples.

Each epoch (from the seed and the epoch): the samples are shuffled, put into rows by best-fit decreasing
(`data_modules.packing.budget_rows`), the rows shuffled and dealt R to a batch (the last batch may hold fewer rows).
With W ranks, batch j goes to rank j mod W and the last (number of batches mod W) batches are dropped, so every rank
runs as many steps (their samples come back in later epochs' shuffles); with one rank every sample comes once per
epoch. The number of batches is the same every epoch (it depends on the lengths only).

The sampler yields lists of indices through the loader's ``sampler`` (``batch_size=None``) over a `BatchedDataset`,
rather than as a ``batch_sampler``: it is a `DistributedSampler`, so Lightning neither injects its own sampler under
DDP nor misses ``set_epoch``, and the `StatefulDataLoader` saves its position (``state_dict``) for an exact resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler

from data_modules.packing import budget_rows


class BatchedDataset(Dataset):
    """A map-style dataset read a batch at a time: ``dataset[[i, j, ...]]`` is the list of those samples (what the
    collator takes), for a loader whose sampler yields batches of indices."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> list[dict]:
        return [self.dataset[i] for i in indices]


class TokenBudgetSampler(DistributedSampler):
    """Batches of dataset indices, each filling ``rows`` rows of ``max_tokens`` by the samples' ``lengths`` (LLM
    tokens, visual ones included), for rank ``rank`` of ``num_replicas``; deterministic from ``seed`` and the epoch.
    Each batch lists its samples row after row (`data_modules.packing.next_fit` lays them out in at most ``rows``
    rows). ``state_dict`` / ``load_state_dict``: the epoch and the batches yielded, for the stateful loader."""

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        max_tokens: int,
        rows: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if not lengths:
            raise ValueError("TokenBudgetSampler got no samples")
        super().__init__(range(len(lengths)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.lengths, self.max_tokens, self.rows = list(lengths), max_tokens, rows
        self.yielded = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already yielded) from load_state_dict
        self._plan: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)

    def _generator(self, salt: int) -> torch.Generator:
        """A generator for (seed, epoch, salt): unlike seed + epoch, seed 7's second epoch is not seed 8's first."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 2 + salt)

    def all_batches(self) -> list[list[int]]:
        """Every rank's batches of the current epoch, in order (before the drop that evens the ranks)."""
        n = len(self.lengths)
        order = torch.randperm(n, generator=self._generator(0)).tolist() if self.shuffle else list(range(n))
        rows = budget_rows(order, self.lengths, self.max_tokens)  # length-sorted: shuffle before dealing
        if self.shuffle:
            rows = [rows[k] for k in torch.randperm(len(rows), generator=self._generator(1)).tolist()]
        return [[i for row in rows[b : b + self.rows] for i in row] for b in range(0, len(rows), self.rows)]

    def batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch (every rank as many: the last batches that would not go round
        are dropped)."""
        if self._plan is None or self._plan[0] != self.epoch:
            every = self.all_batches()
            per_rank = len(every) // self.num_replicas
            self._plan = (self.epoch, every[self.rank : per_rank * self.num_replicas : self.num_replicas])
        return self._plan[1]

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        resumed = self._resume is not None and self._resume[0] == self.epoch  # a resumed epoch goes on where it was
        self.yielded = self._resume[1] if resumed else 0
        self._resume = None
        return self._from(self.batches(), self.yielded)

    def _from(self, batches: list[list[int]], start: int) -> Iterator[list[int]]:
        for batch in batches[start:]:
            self.yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["yielded"]))
