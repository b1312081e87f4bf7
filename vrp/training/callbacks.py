"""Callbacks: RNG state in checkpoints (exact resume), the non-finite loss/gradient guard, a per-step loss log, and
progress lines for logs."""

from __future__ import annotations

import datetime
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class RNGState(L.Callback):
    """Saves the torch/CUDA/numpy/python RNG states in the checkpoint and restores them on resume.

    Lightning restores model, optimizer, loops and dataloader state but not global RNGs; without this, dropout and
    augmentation after a resume differ from an uninterrupted run. States are stored as tensors and lists so the
    checkpoint stays loadable with `weights_only=True`.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, py_state, py_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class NonFiniteError(RuntimeError):
    """A training step produced a NaN/Inf loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Stops the run (``policy="stop"``) or skips the optimizer step (``policy="skip"``, counted, logged as
    ``train/nonfinite_skipped``; more than ``max_skipped`` skips stop the run) when a step's loss or any gradient is
    NaN/Inf, naming the step and the keys of its batch in one line. Checked after backward, before the optimizer
    step, and agreed across ranks, so every rank takes the same decision. A skipped step leaves the weights and the
    optimizer's moments untouched (every ``.grad`` is dropped); the LR schedule still advances.
    """

    def __init__(self, policy: Literal["stop", "skip"] = "stop", max_skipped: int = 10) -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard policy must be 'stop' or 'skip', got {policy!r}")
        self.policy, self.max_skipped = policy, max_skipped
        self.skipped = 0
        self._keys: list[str] = []
        self._loss: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        keys = batch.get("keys") if isinstance(batch, dict) else None
        self._keys += [str(k) for k in keys or []]

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self._loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._loss = float(loss.detach().float().mean())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        bad = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            bad = []  # fp16 loss scaling: overflowing gradients are the scaler's to skip; only the loss is checked
        keys, loss = self._keys, self._loss
        self._keys, self._loss = [], None
        if not trainer.strategy.reduce_boolean_decision(bool(bad) or loss is not None, all=False):
            return
        shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} samples)" if len(keys) > 8 else "")
        what = (f"loss {loss}" if loss is not None else "loss finite") + (
            f", non-finite gradients in {len(bad)} of {len(grads)} tensors (first {bad[0]})" if bad else ""
        )
        message = f"step {trainer.global_step + 1}: {what}; batch keys: {shown or 'unknown (batch has no keys)'}"
        if self.policy == "stop" or self.skipped >= self.max_skipped:
            limit = f" after {self.skipped} skipped steps (max_skipped={self.max_skipped})" if self.skipped else ""
            raise NonFiniteError(
                f"{message}{limit}. Lower the learning rate, check these samples, or set --nonfinite.policy=skip"
            )
        for p in pl_module.parameters():
            p.grad = None  # the optimizer skips parameters without a gradient
        self.skipped += 1
        rank_zero_warn(f"skipped {message} ({self.skipped} skipped so far)")
        pl_module.log("train/nonfinite_skipped", float(self.skipped), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state["skipped"])


class JsonlPredictions(BasePredictionWriter):
    """Writes what `predict_step` returns (a list of row dicts per batch) as JSON lines, flushed per batch, to
    ``path`` (default: ``<default_root_dir>/predictions.jsonl``, the predict run's own folder); with several ranks
    each writes ``predictions.rank<R>.jsonl``."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.written: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(self.path or Path(trainer.default_root_dir) / "predictions.jsonl")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.written = path

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        with self.written.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in prediction)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"predictions written to {self.written}")


class StepLossLog(L.Callback):
    """Appends `{"step", "loss", **parts}` per optimizer step to a JSONL file (rank 0), flushed each line.

    Used by the resume test and handy for quick plots; TensorBoard/CSV loggers hold the same numbers.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or outputs is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {"step": trainer.global_step, "batch_idx": batch_idx, "loss": float(loss.detach())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


class ProgressLog(L.Callback):
    """Prints one line every ``every_n_steps`` optimizer steps (rank 0) for runs whose output goes to a log file
    (``nohup``, SLURM, CI), where a progress bar shows nothing useful::

        [train] step 120/1500 (8.0%) epoch 0 | loss 0.4821 | 14.2 samples/s | 16.0 samples/step | 3105 tokens/s |
        padding 4.1% | 0.89 s/step | elapsed 0:01:47 | ETA 0:20:31   (one line)

    ``loss`` is the mean training loss of the steps since the previous line; samples/s, samples per optimizer step
    (their mean over those steps: with token-budget batches, ``packing.rows``, it varies from step to step; the run's
    mean is printed at the end as ``[train-summary] N optimizer steps, mean X samples/step``)
    and tokens/s (the LLM's real tokens, visual ones included; all ranks: this rank's counts times the world size, an
    estimate with token-budget batches, whose ranks' counts differ),
    the padding fraction (of the LLM token slots computed: padded rows, or packed rows with ``packing`` on;
    `vrp.training.batches.token_counts`) and s/step are measured over the same steps, and the ETA extrapolates that pace to
    the run's last step (``max_steps``, else what ``max_epochs`` amounts to). ``when``: ``"no_tty"`` (default) prints
    only when stdout is not a terminal, ``"always"`` prints anyway, ``"never"`` switches it off.
    """

    def __init__(self, every_n_steps: int = 50, when: Literal["no_tty", "always", "never"] = "no_tty") -> None:
        if every_n_steps < 1:
            raise ValueError(f"ProgressLog: every_n_steps must be >= 1, got {every_n_steps}")
        if when not in ("no_tty", "always", "never"):
            raise ValueError(f"ProgressLog: when must be 'no_tty', 'always' or 'never', got {when!r}")
        self.every_n_steps, self.when = every_n_steps, when
        self.clock = time.monotonic  # seconds; tests give it a fake clock
        self._reset(step=0, now=0.0)
        self._start = 0.0
        self._run = (0, 0)

    def enabled(self) -> bool:
        return self.when == "always" or (self.when == "no_tty" and not sys.stdout.isatty())

    def _reset(self, step: int, now: float) -> None:
        self._last_step, self._last_time, self._losses, self._samples = step, now, [], 0
        self._tokens, self._slots = 0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self.clock()
        self._start = now
        self._reset(trainer.global_step, now)  # a resumed run measures from where it resumed
        self._run = (trainer.global_step, 0)  # (first step, samples since): the run's mean samples per step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.enabled() and trainer.global_step > self._run[0]:
            steps = trainer.global_step - self._run[0]
            mean = self._run[1] * trainer.world_size / steps
            print(f"[train-summary] {steps} optimizer steps, mean {mean:.1f} samples/step", flush=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not self.enabled():
            return
        from vrp.training.batches import batch_size, token_counts

        if outputs is not None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._losses.append(float(loss.detach()))
        if isinstance(batch, dict):
            self._samples += batch_size(batch)
            self._run = (self._run[0], self._run[1] + batch_size(batch))
            real, slots = token_counts(batch, pl_module.model.num_video_tokens)
            self._tokens, self._slots = self._tokens + real, self._slots + slots
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        print(self.line(trainer, step), flush=True)
        self._reset(step, self.clock())

    def line(self, trainer: L.Trainer, step: int) -> str:
        """The progress line at ``step`` for the steps since the previous line."""
        now = self.clock()
        steps, seconds = step - self._last_step, max(now - self._last_time, 1e-9)
        total = (
            trainer.max_steps
            if trainer.max_steps and trainer.max_steps > 0
            else int(trainer.estimated_stepping_batches)
        )
        loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        per_step = seconds / steps
        eta = datetime.timedelta(seconds=round(max(total - step, 0) * per_step))
        elapsed = datetime.timedelta(seconds=round(now - self._start))
        world = trainer.world_size
        padding = 1 - self._tokens / self._slots if self._slots else 0.0
        return (
            f"[train] step {step}/{total} ({100 * step / max(total, 1):.1f}%) epoch {trainer.current_epoch} | "
            f"loss {loss:.4f} | {self._samples * world / seconds:.1f} samples/s | "
            f"{self._samples * world / steps:.1f} samples/step | {self._tokens * world / seconds:.0f} tokens/s | "
            f"padding {100 * padding:.1f}% | {per_step:.2f} s/step | elapsed {elapsed} | ETA {eta}"
        )
