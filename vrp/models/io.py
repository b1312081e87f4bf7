"""The models' I/O: reading weight files safely (`read_checkpoint`, `load_weights`: `weights_only=True`, one-line
`CheckpointError`s naming the file, non-finite weights refused) and the exported-model folder `vrp export` writes
(`build_model` from its ``model.yaml``, `load_exported`, `export_info`); `check_loadable`, the check of weights against
the module they are loaded into. Plain torch + jsonargparse, no Lightning:
evaluation and inference load a model through here without the training layer.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and says what is wrong with it."""


def error_in_chain(error: BaseException | None, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first instance of ``kinds`` in an exception's chain (its causes and contexts: jsonargparse wraps errors
    raised while it instantiates a config's classes), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file `torch.load(weights_only=True)` refused, in our words (never torch's advice)."""
    detail = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), "")
    if isinstance(error, pickle.UnpicklingError) and detail:
        return (
            "holds Python objects other than tensors, numbers, strings and containers, which vrp never loads "
            f"({detail.removeprefix('WeightsUnpickler error: ').split(' was not')[0]})"
        )
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) == b"PK\x03\x04":  # a zip archive, as torch.save writes
            return f"is truncated or corrupted ({size} bytes; its zip archive cannot be read)"
    return f"is not a PyTorch checkpoint ({size} bytes that are neither a zip archive nor a pickle of tensors)"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint dict read with `weights_only=True`; any problem is a one-line `CheckpointError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file (.ckpt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted write or copy; use another one")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} {_unreadable(path, e)}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint (.ckpt, `weights_only=True`) or a .safetensors file; refuses
    non-finite weights."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        try:
            state = load_file(path)
        except SafetensorError as e:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file ({e})") from None
    else:
        state = read_checkpoint(path).get("state_dict")
        if state is None:
            raise CheckpointError(
                f"checkpoint {path} has no 'state_dict'; expected a Lightning checkpoint or a .safetensors file"
            )
    check_finite(state, f"weights file {path}")
    return state


def check_loadable(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str, target: str, hint: str
) -> None:
    """Every weight of ``state`` (read from ``source``) exists in ``own`` (the state dict of ``target``) with the same
    shape: else a KeyError or ValueError naming the first weight that does not, with ``hint`` (how to fix it)."""
    for key, value in state.items():
        if key not in own:
            raise KeyError(f"{source} has {key!r} but the {target} has no such parameter; {hint}")
        if own[key].shape != value.shape:
            raise ValueError(
                f"{key}: {source} shape {tuple(value.shape)} != {target} shape {tuple(own[key].shape)}; {hint}"
            )


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """`CheckpointError` when any floating-point tensor of `state` holds NaN or Inf (a diverged run's weights)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"{where}: {len(bad)} of {len(state)} weight tensors hold NaN or Inf (first {bad[0]}); "
            "the run that wrote them diverged: use an earlier checkpoint"
        )


def build_model(config: dict) -> nn.Module:
    """Instantiate a `VideoReasoner` from its class_path/init_args dict (as LightningCLI saved it)."""
    from jsonargparse import ArgumentParser

    from vrp.models import VideoReasoner

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=VideoReasoner)
    cfg = parser.parse_object({"model": config})
    return parser.instantiate_classes(cfg).model


def export_info(folder: str | Path) -> dict:
    """What `export` recorded about the checkpoint behind `folder` (``export.json``); {} for older exports."""
    path = Path(folder) / "export.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_exported(folder: str | Path) -> nn.Module:
    """The VideoReasoner of an exported folder, in eval mode."""
    folder = Path(folder)
    for name in ("model.yaml", "trainable.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; is {folder} a folder written by `vrp export`?")
    model = build_model(yaml.safe_load((folder / "model.yaml").read_text()))
    model.load_trainable(load_weights(folder / "trainable.safetensors"), strict=True)
    return model.eval()
