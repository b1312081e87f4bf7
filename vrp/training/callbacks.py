"""Callbacks: RNG state in checkpoints (exact resume) and a per-step loss log."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch


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
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
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


class StepLossLog(L.Callback):
    """Appends `{"step", "loss", **parts}` per optimizer step to a JSONL file (rank 0), flushed each line.

    Used by the resume test and handy for quick plots; TensorBoard/CSV loggers hold the same numbers.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero or outputs is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {"step": trainer.global_step, "batch_idx": batch_idx, "loss": float(loss.detach())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
