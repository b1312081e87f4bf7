"""Run folders: nothing a run writes lands in another run's folder.

- `vrp validate|test|predict` write into a new folder of their own, ``<default_root_dir>/<subcommand>/version_N``
  (trainer ``default_root_dir`` and every logger's ``save_dir`` point there), never over the training run's logs.
- Every run locks the folders it writes (default_root_dir, each logger's save_dir, each checkpoint dirpath) for as
  long as it lives; a second live run asking for a held folder stops with one line naming the folder and the holder.
  The lock is a POSIX record lock (``fcntl.lockf``) on ``<folder>/.vrp-run.lock``: it belongs to this process
  only (forked DataLoader workers do not inherit it, unlike ``flock``) and the kernel releases it when the process
  ends, even by SIGKILL, so a resumed run after a crash is never refused.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

LOCK_NAME = ".vrp-run.lock"
OWN_FOLDER_SUBCOMMANDS = ("validate", "test", "predict")
RUN_DIR_ENV = "VRP_RUN_DIR"  # rank 0's choice, inherited by the processes Lightning's DDP launcher starts
_held: dict[Path, IO[str]] = {}


class RunFolderBusy(RuntimeError):
    """Another live run holds a folder this run would write."""


def new_version_folder(parent: Path) -> Path:
    """``parent/version_N`` for the first free N, created here (mkdir is atomic: two runs never get the same N)."""
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len("version_") :]) for p in parent.glob("version_*") if p.name[len("version_") :].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{n}").mkdir()
            return parent / f"version_{n}"
        except FileExistsError:
            n += 1


def _shared_run_name() -> str | None:
    """A folder name all ranks of one multi-process launch agree on without talking (torchrun, SLURM)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return None


def own_run_folder(root: str | os.PathLike, subcommand: str) -> Path:
    """The new folder of a validate/test/predict run under ``root``; the same one on every rank."""
    if os.environ.get(RUN_DIR_ENV) and int(os.environ.get("LOCAL_RANK", "0")) > 0:  # a child of the DDP launcher
        return Path(os.environ[RUN_DIR_ENV])
    shared = _shared_run_name()
    if shared is not None:
        folder = Path(root) / subcommand / shared
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = new_version_folder(Path(root) / subcommand)
    os.environ[RUN_DIR_ENV] = str(folder)
    return folder


def redirect_to_own_folder(trainer_config: Any, subcommand: str) -> Path:
    """Point a parsed trainer config (jsonargparse Namespace) of a validate/test/predict run at its own new folder:
    ``default_root_dir`` and the ``save_dir`` of every configured logger. Returns the folder."""
    root = trainer_config.get("default_root_dir") or os.getcwd()
    folder = own_run_folder(root, subcommand)
    trainer_config["default_root_dir"] = str(folder)
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = getattr(logger, "init_args", None)
        if init is not None and "save_dir" in init:
            init["save_dir"] = str(folder)
    return folder


def written_folders(trainer: Any) -> list[Path]:
    """The folders a trainer writes: default_root_dir, each logger's save_dir, each checkpoint callback's dirpath."""
    folders = [trainer.default_root_dir]
    folders += [lg.save_dir for lg in trainer.loggers if getattr(lg, "save_dir", None)]
    folders += [cb.dirpath for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    return [Path(f) for f in folders if f and "://" not in str(f)]


def lock_folders(folders: Iterable[str | os.PathLike]) -> None:
    """Hold an exclusive lock on each folder for the life of this process; `RunFolderBusy` if a live run has it.
    A folder inside another one of the list is covered by that one's lock (no lock file of its own)."""
    chosen: list[Path] = []
    for folder in sorted({Path(f).resolve() for f in folders}):  # parents sort before their subfolders
        if not any(folder.is_relative_to(parent) for parent in chosen):
            chosen.append(folder)
    for folder in chosen:
        if folder in _held:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EACCES or EAGAIN: another process holds it
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise RunFolderBusy(
                f"{folder} is in use by another live run ({holder}); wait for it to end, or give this "
                "run its own folder (--trainer.default_root_dir, the loggers' save_dir, the "
                "checkpoint dirpath)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _held[folder] = handle


def release_folders() -> None:
    """Drop every lock this process holds (the end of a run; the kernel does the same when the process exits)."""
    while _held:
        _, handle = _held.popitem()
        handle.close()
