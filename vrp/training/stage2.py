"""Stage 2: instruction fine-tuning. LM loss on answer tokens; by default fusion + projection + LoRA adapters train.

Initialised (weights only) from a stage-1 checkpoint via `init_from`, on a fresh `fit` only: a resumed run, `test`,
`validate` and `predict` read their `--ckpt_path`, which holds every weight stage 1 gave (frozen ones included), and
never open `init_from`.
Validation logs the LM loss and, on batches with `options`, multiple-choice accuracy per question type
(`val/acc_<type>`, `val/acc`): the answer loss flattens long before accuracy stops moving, so accuracy is the progress
signal. Each test batch is scored by `scorer` and the `MCOutput` returned; the results callback
(`vrp.evaluation.callbacks.TestResults`, the CLI's ``results:`` options) gathers, writes and prints the per-type
table, so test-time options are trainer options, never hyper-parameters frozen into a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vrp.models.io import CheckpointError, check_loadable, load_weights
from vrp.scoring.metrics import PerTypeAccuracy
from vrp.scoring.per_question import prediction_rows
from vrp.scoring.scorers import GenerateScorer, LikelihoodScorer, MCOutput
from vrp.training import batches, checkpoint, datamodule_handoff
from vrp.training.losses import lm_loss
from vrp.training.optim import adamw_cosine_from_hparams
from vrp.training.strategies import configure_fsdp2


def load_stage1(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Copy the `model.*` weights of a stage-1 checkpoint into `model` (stage-1 heads are ignored).

    Every stage-1 model weight must exist in `model` with the same shape (else a clear error: the fusion config
    differs). Returns (loaded names, trainable names of `model` that the checkpoint did not provide, e.g. LoRA).
    """
    state = load_weights(path)
    loaded = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    hint = "the fusion configs differ: stage 1 and stage 2 must use the same vision/fusion config"
    check_loadable(model.state_dict(), loaded, path, "stage-2 model", hint)
    if not loaded:
        raise ValueError(f"{path}: no 'model.*' weights found; is this a stage-1 checkpoint?")
    model.load_state_dict(loaded, strict=False)
    fresh = sorted(checkpoint.trainable_names(model) - set(loaded))
    return sorted(loaded), fresh


class InstructionTuning(L.LightningModule):
    """Stage-2 LightningModule around a `VideoReasoner` (default: fusion + projection + LoRA trainable)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        init_from: str | None = None,
        scorer: Any = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        val_accuracy: bool = True,
        val_question_types: list[str] | None = None,
        max_new_tokens: int = 32,
    ) -> None:
        """`scorer(model, batch) -> MCOutput` scores multiple-choice test batches (default: length-normalised
        likelihood, `vrp.scoring.scorers.LikelihoodScorer`); `val_accuracy` scores validation batches that carry options (per type; `val_question_types` fixes the type
        list, which multi-GPU runs need for per-type figures, else only the overall accuracy is synced);
        `max_new_tokens` bounds the answers `vrp predict` generates for open questions."""
        super().__init__()
        self.save_hyperparameters(ignore=["model", "scorer"])  # the model's config: the CLI records it (vrp.cli)
        self.model = model
        self.scorer = LikelihoodScorer() if scorer is None else scorer
        self.strict_loading = False
        self._stage1_keys: set[str] = set()  # weights init_from gave (or a loaded checkpoint held): always saved
        self._init: tuple[list[str], list[str]] | Exception | None = None  # what setup("fit") read from init_from
        self.val_acc = PerTypeAccuracy(val_question_types)

    def init_from_stage1(self) -> tuple[list[str], list[str]]:
        """Copy `init_from`'s stage-1 weights into the model (`load_stage1`); a fresh `fit` does it in `setup`."""
        loaded, fresh = load_stage1(self.model, self.hparams.init_from)
        self._stage1_keys = set(loaded)
        return loaded, fresh

    def encode(self, batch: dict) -> torch.Tensor:
        """(B, Q, D_llm) video tokens (from cached encoder tokens when the datamodule reads a feature cache)."""
        return self.model.video_tokens(batch)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The training objective: {"loss": the answer tokens' LM loss, "answer": the same}."""
        answer = lm_loss(self.model, self.encode(batch), batch)
        return {"loss": answer, "answer": answer}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts = self.losses(batch)
        n = batches.batch_size(batch)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n)
        return parts["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if "labels" in batch:
            loss = lm_loss(self.model, self.encode(batch), batch)
            self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batches.batch_size(batch))
        if self.hparams.val_accuracy and "options" in batch:
            out = self.scorer(self.model, batch)
            types = batch.get("question_type") or ["all"] * len(batch["options"])
            self.val_acc.update(out.prediction, batch["answer_index"], types)

    def on_validation_epoch_end(self) -> None:
        if not int(self.val_acc.total.sum()):
            return
        fixed = not self.val_acc.grow
        if self.trainer.world_size > 1 and not fixed:  # ranks may have seen different type lists: sync the total
            hits = torch.stack([self.val_acc.correct.sum(), self.val_acc.total.sum()]).float().to(self.device)
            hits = self.all_gather(hits).view(-1, 2).sum(0)
            self.log("val/acc", (hits[0] / hits[1]).item() * 100, prog_bar=True, rank_zero_only=True)
        else:
            for name, acc in self.val_acc.compute().items():
                self.log(
                    "val/acc" if name == "overall" else f"val/acc_{name}",
                    acc * 100,
                    prog_bar=name == "overall",
                    rank_zero_only=True,
                )
        self.val_acc.reset()

    def test_step(self, batch: dict, batch_idx: int) -> MCOutput | None:
        """The scored batch (None when every sample was skipped); the results callback turns it into rows."""
        if not batches.has_samples(batch):
            return None
        if "options" not in batch:
            raise KeyError("test batches need 'options'/'answer_index' (a multiple-choice split such as mc.csv)")
        return self.scorer(self.model, batch)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Rows for `vrp predict` (`vrp.scoring.per_question.prediction_rows`): the scorer's choice and per-option
        scores for multiple-choice batches, generated text otherwise; `JsonlPredictions` writes them."""
        if not batches.has_samples(batch):
            return prediction_rows(batch, None, [])
        if "options" in batch:
            return prediction_rows(batch, self.scorer(self.model, batch))
        return prediction_rows(batch, None, GenerateScorer(self.hparams.max_new_tokens).generate(self.model, batch))

    # ---- plumbing -----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule_handoff.configure_datamodule(self)
        if stage == "fit" and self.hparams.init_from:
            # Before `configure_model` shards the model; whether a checkpoint then replaces these weights (resume) is
            # known only in `on_fit_start`, so a missing or unusable file is reported there, and only for a fresh run.
            try:
                self._init = self.init_from_stage1()
            except Exception as e:  # noqa: BLE001 -- re-raised in on_fit_start unless a checkpoint is restored
                self._init = e

    def on_fit_start(self) -> None:
        init, self._init = self._init, None
        if init is None or self.trainer.ckpt_path is not None:  # nothing to load, or resumed: the checkpoint won
            return
        path = self.hparams.init_from
        if isinstance(init, CheckpointError) and not Path(path).exists():
            raise CheckpointError(
                f"init_from {path} does not exist: train stage 1 first (make pretrain), or set "
                "model.init_args.init_from: null to start stage 2 from scratch"
            ) from None
        if isinstance(init, Exception):
            raise init
        loaded, fresh = init
        rank_zero_info(
            f"stage 2: loaded {len(loaded)} weights from {path}; {len(fresh)} trainable tensors keep their own "
            "init (not in stage 1: LoRA adapters, an LLM trained only in stage 2)"
        )

    def configure_model(self) -> None:
        configure_fsdp2(self, [])

    def on_train_epoch_end(self) -> None:
        datamodule_handoff.log_skips(self)

    def configure_optimizers(self) -> dict:
        return adamw_cosine_from_hparams(self)

    def on_save_checkpoint(self, ckpt: dict) -> None:
        checkpoint.drop_frozen(ckpt, self, keep={f"model.{k}" for k in self._stage1_keys})

    def on_load_checkpoint(self, ckpt: dict) -> None:
        checkpoint.check_trainable_keys(ckpt, self)
        state = ckpt.get("state_dict", {})
        self._stage1_keys |= {k[len("model.") :] for k in state if k.startswith("model.")}
