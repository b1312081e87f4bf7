"""A weighted mixture of map-style sources (any `MapSource`, a mixture included; LightningCLI builds each
``class_path`` entry of the YAML list into its source object)."""

from __future__ import annotations

import random

from data_modules.skips import SkipCounter
from data_modules.sources.record import MapSource, Record


class Mixture:
    """Draws ``round(w_i / sum(w) * num_samples)`` records from source i for one epoch's list (``num_samples``
    defaults to the sources' total size): a small source is repeated, a large one subsampled, each without
    repetition until exhausted, in an order fixed by ``seed``."""

    def __init__(
        self,
        sources: list[MapSource],
        weights: list[float] | None = None,
        *,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        weights = weights if weights is not None else [1.0] * len(sources)
        if len(weights) != len(sources) or not sources or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"Mixture needs one non-negative weight per source (sources={len(sources)}, weights={weights})"
            )
        self.sources, self.weights, self.num_samples, self.seed = sources, weights, num_samples, seed

    def load(self, skips: SkipCounter) -> list[Record]:
        parts = [s.load(skips) for s in self.sources]
        for s, p in zip(self.sources, parts):
            if not p:
                raise ValueError(f"mixture source {type(s).__name__}({getattr(s, 'path', '')}) has no records")
        total = self.num_samples or sum(len(p) for p in parts)
        rng = random.Random(self.seed)
        out = []
        for p, w in zip(parts, self.weights):
            n = round(w / sum(self.weights) * total)
            order = []
            while len(order) < n:
                perm = list(range(len(p)))
                rng.shuffle(perm)
                order += perm
            out += [p[i] for i in order[:n]]
        return out
