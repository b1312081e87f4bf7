"""Zero-shot transfer protocol: fine-tune with some question types held out, evaluate on all of them.

In the stage-2 YAML, wrap the training source in `HoldOutTypes` (itself a `MapSource`, so the datamodule accepts it)
and list the same types under the module's evaluation; the results table then marks them and adds `seen` / `unseen`
rows (`vrp.evaluation.results.accuracy_table(rows, held_out=...)`):

    data:
      init_args:
        train:
          class_path: vrp.evaluation.holdout.HoldOutTypes
          init_args:
            held_out: [predictive, counterfactual]
            source: {class_path: data_modules.sources.LlavaInstructions,
                     init_args: {path: data/synthetic/train/instructions.json}}

A family of question types is held out by name when both sides get the same ``type_groups`` mapping (NExT-QA:
``held_out: [causal]``, ``type_groups: {causal: [CW, CH], ...}``; `experiments/zeroshot/nextqa_holdout_causal.yaml`).
"""

from __future__ import annotations

import logging

from data_modules.skips import SkipCounter
from data_modules.sources import MapSource, Record
from vrp.evaluation.results import expand_types

log = logging.getLogger(__name__)


class HoldOutTypes:
    """The records of ``source`` (any `MapSource`; a `Mixture` to hold out of several) except those whose question
    type is in ``held_out``.

    ``held_out`` may name families of ``type_groups`` (the same mapping as the module's ``type_groups``), which
    hold out all their codes: ``held_out: [causal]`` with NExT-QA's families drops ``CW`` and ``CH``."""

    def __init__(
        self, source: MapSource, held_out: list[str], *, type_groups: dict[str, list[str]] | None = None
    ) -> None:
        if not held_out:
            raise ValueError("HoldOutTypes needs at least one type in `held_out` (else use the source directly)")
        self.source = source
        self.held_out = expand_types(held_out, type_groups)

    def load(self, skips: SkipCounter) -> list[Record]:
        records = self.source.load(skips)
        kept = [r for r in records if r.question_type not in self.held_out]
        if len(kept) == len(records):
            raise ValueError(
                f"no record has a held-out type {self.held_out}; types present: "
                f"{sorted({str(r.question_type) for r in records})}"
            )
        if not kept:
            raise ValueError(f"holding out {self.held_out} leaves no training records")
        log.info(
            "zero-shot protocol: held out %d of %d records of types %s",
            len(records) - len(kept),
            len(records),
            self.held_out,
        )
        return kept
