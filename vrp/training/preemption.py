"""Stopping `vrp fit` on a signal (SIGTERM from SLURM / Kubernetes / a spot reclaim, Ctrl-C's SIGINT, or an early
warning such as SLURM's ``--signal=USR1@90``): at the end of the optimizer step in progress the run saves a
checkpoint of the step reached (atomically, beside the run's ``last.ckpt``), prints one line

    stopped by SIGTERM at step 1234; checkpoint runs/x/checkpoints/last.ckpt; resume with --ckpt_path last

and exits with status 128 + the signal's number (`exit_status`: 143 SIGTERM, 130 SIGINT, 138 SIGUSR1), the status a
shell gives a process the signal killed, so a scheduler, `make` or a job script never reads it as "done". Resuming
from that checkpoint is exact (same weights, optimizer, RNG and dataloader position as an uninterrupted run). A
second Ctrl-C stops at once, without a checkpoint. docs/reliability.md has the scheduler recipes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: 128 + its number."""
    return 128 + int(signum)


def signal_number(name: str) -> signal.Signals:
    """``"SIGUSR1"`` / ``"USR1"`` / ``"10"`` -> the signal; anything else is a one-line ValueError."""
    text = str(name).strip().upper()
    try:
        return (
            signal.Signals(int(text))
            if text.isdigit()
            else signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
        )
    except (KeyError, ValueError):
        raise ValueError(f"signals.early_warning: {name!r} is not a signal name such as SIGUSR1 or USR2") from None


class StoppedBySignal(SystemExit):
    """Raised (on every rank) after the checkpoint is written; its ``code`` is `exit_status` of the signal."""


class StopOnSignal(L.Callback):
    """During `fit`, turns SIGTERM, SIGINT and ``early_warning`` (e.g. ``"SIGUSR1"``) into: finish the current
    optimizer step, save a checkpoint, print one line, exit with `exit_status` (see the module docstring).

    The handlers only set a flag (a signal may arrive anywhere, even inside a DataLoader worker's fork, which
    ignores it); the ranks agree on the flag after each step, so all of them save the same step and stop together.
    A signal that arrives after the last step lets the run finish normally. Outside `fit` nothing changes.
    """

    def __init__(self, early_warning: str | None = None) -> None:
        self.signals = [signal.SIGTERM, signal.SIGINT]
        if early_warning:
            extra = signal_number(early_warning)
            if extra not in self.signals:
                self.signals.append(extra)
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self._step_before = -1

    # ---- handlers -----------------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if self.received is None:
            self.received = signal.Signals(signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._pid = os.getpid()
        for s in self.signals:
            previous = signal.signal(s, self._handle)
            self._previous.setdefault(int(s), previous)  # the handler from before `fit`, restored after it

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.received = None
            self._install()  # before the DataLoader workers fork, so that they inherit it (and ignore signals)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()  # again: the Trainer registers its own SIGTERM handler between setup and here

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    # ---- stopping -----------------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step_before:  # accumulating gradients: stop only after an optimizer step
            return
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:  # the last step: finish normally
            return
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        name = self.received.name if self.received is not None else "a signal to another rank"
        path, hint = self._checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank takes part; the checkpoint IO writes atomically
        if trainer.is_global_zero:
            print(f"stopped by {name} at step {trainer.global_step}; checkpoint {path}; {hint}", file=sys.stderr)
            sys.stderr.flush()
        raise StoppedBySignal(exit_status(self.received or signal.SIGTERM))

    @staticmethod
    def _checkpoint_path(trainer: L.Trainer) -> tuple[Path, str]:
        """Where the step reached is saved: the run's last checkpoint (found by ``--ckpt_path last``), else a file
        in the run's folder."""
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath and "{" not in cb.CHECKPOINT_NAME_LAST:
                last = Path(cb.last_model_path) if cb.last_model_path else None
                if last is None or last.parent != Path(cb.dirpath):
                    last = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
                return last, "resume with --ckpt_path last"
        path = Path(trainer.default_root_dir) / "stopped.ckpt"
        return path, f"resume with --ckpt_path {path}"
