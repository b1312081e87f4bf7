"""`vrp` command line: the Lightning commands (fit / validate / test / predict) plus a few tools.

    vrp fit --config experiments/embedded/pretrain.yaml [--trainer.devices=2 ...]
    vrp fit --config experiments/embedded/finetune.yaml --ckpt_path last      # resume
    vrp test --config experiments/embedded/finetune.yaml --ckpt_path runs/embedded/finetune/checkpoints/last.ckpt
    vrp predict --config experiments/embedded/finetune.yaml --ckpt_path ...     # answers as JSONL
    vrp export | cache | track | ask | lmms-task ...                                    (see `vrp <tool> --help`)

The commands live in `vrp.tools` (the Lightning ones in `vrp.tools.lightning_cli`); this module dispatches to them
and ends user errors in one `error: ...` line.
"""

from __future__ import annotations

import sys

from data_modules.features import FeatureCacheMismatch
from vrp import runs
from vrp.models.io import CheckpointError, error_in_chain
from vrp.models.paths import ModelPathError
from vrp.tools.lightning_cli import cli
from vrp.training.callbacks import NonFiniteError
from vrp.training.strategies import close_process_group

# Problems with what the user gave (a file, a folder, a setting), each already one clear line: printed as
# `error: ...` with exit status 2 instead of a traceback.
USER_ERRORS = (CheckpointError, ModelPathError, NonFiniteError, runs.RunFolderBusy, FeatureCacheMismatch)

TOOLS = {
    "export": "vrp.tools.export",
    "cache": "vrp.tools.cache",
    "track": "vrp.tools.track",
    "ask": "vrp.tools.ask",
    "lmms-task": "vrp.tools.lmms_task",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        import importlib

        importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        return
    try:
        cli(argv)
        close_process_group()
    except Exception as e:  # noqa: BLE001 -- only user errors are caught; anything else is re-raised unchanged
        cause = user_error(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error(error: BaseException) -> BaseException | None:
    """The `USER_ERRORS` instance in an exception's chain (jsonargparse wraps errors raised while it instantiates
    the config's classes), or None."""
    return error_in_chain(error, USER_ERRORS)
