"""Metrics: per-question-type accuracy for multiple choice, exact match / BLEU / ROUGE for open-ended answers.

Both are torchmetrics ``Metric``s so they accumulate over batches and sync across ranks. Question types are strings,
which torchmetrics cannot reduce, so ``PerTypeAccuracy`` keeps one counter per type in a fixed order: give the types
up front when running distributed (every rank must hold the same list); single-process runs may let it grow.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.text import BLEUScore, ROUGEScore


class PerTypeAccuracy(Metric):
    """Accuracy per question type and overall (micro: every question counts once).

    ``update(preds (B,), target (B,), types [B])``; ``compute()`` returns ``{type: acc, ..., "overall": acc}`` with
    accuracies in [0, 1]; types never seen are left out.
    """

    full_state_update = False

    def __init__(
        self, types: Sequence[str] | None = None, *, grow: bool | None = None, sync_on_compute: bool = True
    ) -> None:
        """``sync_on_compute=False`` for counts that already cover every rank (computed on one rank only)."""
        super().__init__(sync_on_compute=sync_on_compute)
        self.types: list[str] = list(types or [])
        self.grow = not self.types if grow is None else grow
        n = len(self.types)
        self.add_state("correct", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def _index(self, name: str) -> int:
        if name not in self.types:
            if not self.grow:
                raise KeyError(f"question type {name!r} is not one of {self.types}; pass it in `types` or grow=True")
            self.types.append(name)
            self.correct = torch.cat([self.correct, self.correct.new_zeros(1)])
            self.total = torch.cat([self.total, self.total.new_zeros(1)])
            self._defaults["correct"] = torch.zeros(len(self.types), dtype=torch.long)
            self._defaults["total"] = torch.zeros(len(self.types), dtype=torch.long)
        return self.types.index(name)

    def update(self, preds: torch.Tensor, target: torch.Tensor, types: Sequence[str]) -> None:
        if not (len(preds) == len(target) == len(types)):
            raise ValueError(f"preds, target and types differ in length: {len(preds)}, {len(target)}, {len(types)}")
        hits = (preds.to(target.device) == target).long().cpu()
        idx = torch.tensor([self._index(t) for t in types], dtype=torch.long)
        self.correct.index_add_(0, idx.to(self.correct.device), hits.to(self.correct.device))
        self.total.index_add_(0, idx.to(self.total.device), torch.ones_like(hits).to(self.total.device))

    def compute(self) -> dict[str, float]:
        out = {t: (c / n).item() for t, c, n in zip(self.types, self.correct, self.total) if n > 0}
        total = self.total.sum()
        out["overall"] = (self.correct.sum() / total).item() if total > 0 else float("nan")
        return out

    def counts(self) -> dict[str, int]:
        """Questions seen per type (and overall), for tables."""
        out = {t: int(n) for t, n in zip(self.types, self.total) if n > 0}
        out["overall"] = int(self.total.sum())
        return out


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles dropped, whitespace collapsed (SQuAD-style), for exact match."""
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


class OpenEndedMetrics:
    """Exact match (normalised), BLEU (4-gram by default; short answers may want 2) and ROUGE-1/2/L F-measure of generated answers against references.

    Holds torchmetrics objects; ``update(preds [B], refs [B] | [[refs...]])``, ``compute() -> dict[str, float]``.
    rougeLsum is left out because it needs nltk for sentence splitting.
    """

    def __init__(self, bleu_n_gram: int = 4) -> None:
        self.bleu_key = f"bleu{bleu_n_gram}"
        self.bleu = BLEUScore(n_gram=bleu_n_gram, smooth=True)
        self.rouge = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"))
        self.exact = 0
        self.count = 0

    def update(self, preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> None:
        refs = [[r] if isinstance(r, str) else list(r) for r in refs]
        if len(preds) != len(refs):
            raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
        self.bleu.update(list(preds), refs)
        self.rouge.update(list(preds), refs)
        self.exact += sum(any(normalize_answer(p) == normalize_answer(r) for r in rs) for p, rs in zip(preds, refs))
        self.count += len(preds)

    def compute(self) -> dict[str, float]:
        rouge = self.rouge.compute()
        return {
            "exact_match": self.exact / self.count if self.count else float("nan"),
            self.bleu_key: float(self.bleu.compute()),
            **{k: float(rouge[f"{k}_fmeasure"]) for k in ("rouge1", "rouge2", "rougeL")},
        }
