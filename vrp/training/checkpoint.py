"""Checkpoint policy: only trainable weights are stored, writes are atomic, loads are `weights_only`.

Frozen backbones (VFM, LLM base weights) are rebuilt from the names/paths in the config, so a checkpoint holds only
the trainable parameters (fusion, projection, LoRA adapters, stage heads) plus optimizer, scheduler, loop, RNG and
dataloader state. The stage modules call `drop_frozen` from `on_save_checkpoint` and `check_trainable_keys` from
`on_load_checkpoint`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from vrp.models.io import CheckpointError, check_finite, error_in_chain, read_checkpoint


def trainable_names(module: nn.Module) -> set[str]:
    """Names (as in `module.state_dict()`) of the parameters that require grad."""
    return {name for name, p in module.named_parameters() if p.requires_grad}


def drop_frozen(checkpoint: dict[str, Any], module: nn.Module, keep: Iterable[str] = ()) -> None:
    """Remove frozen weights from a Lightning checkpoint dict in place (keys of `checkpoint["state_dict"]`), except
    those named in ``keep`` (weights no config rebuilds, e.g. stage-1 weights that stage 2 keeps frozen)."""
    trainable = trainable_names(module)
    keep = trainable | set(keep)
    state = checkpoint.get("state_dict", {})
    checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
    checkpoint["trainable_keys"] = sorted(trainable)


def check_trainable_keys(checkpoint: dict[str, Any], module: nn.Module, path: str = "checkpoint") -> None:
    """Fail clearly when a checkpoint lacks trainable weights of `module`, carries unknown ones or non-finite ones."""
    check_finite(checkpoint.get("state_dict", {}), path)
    keys = set(checkpoint.get("state_dict", {}))
    expected = trainable_names(module)
    missing, unexpected = sorted(expected - keys), sorted(keys - set(module.state_dict()))
    if missing or unexpected:
        raise RuntimeError(
            f"{path}: trainable weights do not match the model built from the config "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}). "
            "Was it written with a different model config (fusion type, LoRA targets, llm_mode)?"
        )


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files `AtomicCheckpointIO` leaves behind when a run is killed mid-write.

    Call it only while holding the folder's run lock (`vrp.runs.lock_folders`): then no live writer owns them.
    """
    folder = Path(folder)
    stale = sorted(p for p in folder.glob(".*.*.tmp") if p.is_file()) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file in the target folder, fsync, then rename over the target.

    A run killed mid-write leaves the previous checkpoint intact. Loading always uses `weights_only=True`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        if "://" in str(path):  # remote: fsspec transaction (Lightning's own atomic save)
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            cause = error_in_chain(e, (OSError,))  # torch.save's zip writer wraps it in a RuntimeError
            if cause is None:
                raise
            free = shutil.disk_usage(path.parent).free / 2**20
            raise CheckpointError(
                f"checkpoint {path} could not be written: {cause.strerror or cause} ({free:.0f} MiB free in "
                f"{path.parent}); the previous {path.name}, if any, is intact. Free space there (or set the "
                "checkpoint dirpath to another disk), then resume with --ckpt_path last"
            ) from e

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" not in str(path):
            return read_checkpoint(path)
        if not get_filesystem(path).exists(path):
            raise CheckpointError(f"checkpoint {path} does not exist")
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
