"""The test-results callback: what `vrp test` does with the stage-2 module's scored test batches.

The module's ``test_step`` returns each batch's `MCOutput`; `TestResults` turns it into rows, gathers them (and the
skipped samples) across ranks, writes ``test_results.json`` / ``.md``, prints the table and logs ``test/acc_<type>``.
Its options are trainer-side (the CLI's ``results:`` section, ``--results.dir=...``), so they never become
hyper-parameters frozen into a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from vrp.evaluation.results import check_groups, load_blind_baseline, write_results
from vrp.scoring.per_question import rows_from_batch


class TestResults(L.Callback):
    """Per-type accuracy of the test split, written to ``dir`` (default: the trainer's default_root_dir, a new folder
    per `vrp test` run).

    ``held_out_types`` (zero-shot protocol: types, or families of ``type_groups``) are marked, with seen/unseen rows;
    ``type_groups`` (e.g. NExT-QA's ``{causal: [CW, CH], temporal: [TN, TC, TP], descriptive: [DC, DL, DO]}``) adds
    a row per family with its codes as sub-rows; ``blind_baseline`` (a synthetic ``meta.json``) adds the blind
    text-prior column."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        dir: str | None = None,
        *,
        held_out_types: list[str] | None = None,
        type_groups: dict[str, list[str]] | None = None,
        blind_baseline: str | None = None,
    ) -> None:
        check_groups(type_groups)  # a bad mapping fails when the config is read, not after the test epoch
        self.dir, self.held_out_types, self.type_groups = dir, list(held_out_types or ()), type_groups
        self.blind_baseline = blind_baseline
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.written: Path | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.skipped = [], []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.skipped += batch.get("skipped", [])
        if outputs is not None:
            self.rows += rows_from_batch(batch, outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows, skipped = self.rows, self.skipped
        if trainer.world_size > 1:
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, (rows, skipped))
            # DistributedSampler pads ranks to equal length by repeating questions: keep each key once
            rows = list({r["key"] or i: r for i, r in enumerate(r for part in gathered for r in part[0])}.values())
            skipped = list({s["key"]: s for part in gathered for s in part[1]}.values())
        if not trainer.is_global_zero:
            return
        out = Path(self.dir or trainer.default_root_dir)
        blind = load_blind_baseline(self.blind_baseline) if self.blind_baseline else None
        _, md_path, table = write_results(
            out, rows, held_out=self.held_out_types, groups=self.type_groups, blind=blind, skipped=skipped
        )
        for name, acc in table["accuracy"].items():
            pl_module.log(f"test/acc_{name}", acc, rank_zero_only=True)
        self.written = md_path
        print("\n" + md_path.read_text() + f"(written to {md_path})\n", flush=True)
