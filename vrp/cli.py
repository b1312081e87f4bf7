"""`vrp` command line: LightningCLI sub-commands (fit / validate / test / predict) plus a few tools.

    vrp fit --config experiments/embedded/pretrain.yaml [--trainer.devices=2 ...]
    vrp fit --config experiments/embedded/finetune.yaml --ckpt_path last      # resume
    vrp test --config experiments/embedded/finetune.yaml --ckpt_path runs/embedded/finetune/checkpoints/last.ckpt
    vrp predict --config experiments/embedded/finetune.yaml --ckpt_path ...     # answers as JSONL
    vrp prepare | export | cache | track | ask | lmms-task ...                          (see `vrp <tool> --help`)

Every component (model, vision encoder, fusion, LLM, datamodule, strategy, loggers) is a `class_path` in YAML.
The seed (`seed_everything`) is part of the config; checkpoints load with `weights_only=True`. validate / test /
predict write into a new folder of their own (`vrp.runs`); user errors end in one `error: ...` line.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from data_modules.features import FeatureCacheMismatch
from vrp import runs
from vrp.evaluation.callbacks import TestResults
from vrp.models.io import CheckpointError, check_finite, read_checkpoint
from vrp.models.paths import ModelPathError
from vrp.training.callbacks import JsonlPredictions, NonFiniteError, NonFiniteGuard, RNGState
from vrp.training.checkpoint import remove_stale_temp_files
from vrp.training.preemption import StopOnSignal
from vrp.training.strategies import close_process_group

# Problems with what the user gave (a file, a folder, a setting), each already one clear line: printed as
# `error: ...` with exit status 2 instead of a traceback.
USER_ERRORS = (CheckpointError, ModelPathError, NonFiniteError, runs.RunFolderBusy, FeatureCacheMismatch)

TOOLS = {
    "prepare": "vrp.training.tiny_backbones",
    "export": "vrp.training.export",
    "cache": "vrp.training.cache",
    "track": "vrp.training.track",
    "ask": "vrp.evaluation.ask",
    "lmms-task": "vrp.evaluation.lmms_task",
}


NOISE = (
    "Parser key",
    "Does not validate against",
    "Subtypes:",
    "Errors:",
    "Given value",
    "- Expected a <class 'NoneType'>",
)


def root_cause(message: str) -> str | None:
    """The line that matters in a multi-line jsonargparse error, e.g. ``model (vrp.training.InstructionTuning):
    Option 'lerning_rate' is not accepted``: the innermost message under the union noise, with its key and class."""
    lines = [line.strip() for line in message.splitlines()]
    causes = [
        line.removeprefix("- ")
        for line in lines
        if line and not line.startswith(NOISE) and "Problem with given class_path" not in line
    ]
    if len(lines) < 2 or not causes:
        return None
    cause = causes[-1]
    accepted = re.search(r"Option '[^']+' is not accepted", cause)
    cause = accepted.group(0) if accepted else cause
    keys = re.findall(r'Parser key "([^"]+)"', message)
    classes = re.findall(r"Problem with given class_path '([^']+)'", message)
    where = ".init_args.".join(keys) + (f" ({classes[-1]})" if classes and len(classes) == len(keys) else "")
    return f"{where}: {cause}" if where else cause


class VRPArgumentParser(LightningArgumentParser):
    """Ends every config error with the line that matters (the real message is otherwise several lines up, above
    jsonargparse's account of the union types it tried)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        cause = root_cause(message) if self.exit_on_error else None  # only where it is printed, not nested ones
        super().error(message + (f"\nerror: {cause}" if cause else ""), ex)


class VRPCLI(LightningCLI):
    """LightningCLI with the project's always-on pieces: RNG state in checkpoints, atomic checkpoint writes, the
    non-finite guard, a checkpoint and a non-zero exit on SIGTERM / SIGINT (`vrp.training.preemption`), run folders that never overlap (`vrp.runs`), and the user's model config winning over
    a checkpoint's."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RNGState, "rng_state")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")  # --nonfinite.policy=skip
        parser.add_lightning_class_args(StopOnSignal, "signals")  # --signals.early_warning=SIGUSR1
        parser.add_lightning_class_args(JsonlPredictions, "predictions")  # vrp predict: --predictions.path=FILE
        parser.add_lightning_class_args(
            TestResults, "results"
        )  # vrp test: --results.dir=DIR, --results.blind_baseline=

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self.given_config = self.config.clone()  # before LightningCLI merges a --ckpt_path's hyper-parameters
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and "://" not in str(ckpt_path):
            # a bad file ends in one line naming it, before LightningCLI reads it raw
            check_finite(read_checkpoint(ckpt_path).get("state_dict", {}), f"checkpoint {ckpt_path}")

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub is None:
            return
        self._keep_given_model(sub)
        if sub in runs.OWN_FOLDER_SUBCOMMANDS:
            folder = runs.redirect_to_own_folder(self.config[sub]["trainer"], sub)
            rank_zero_info(f"vrp {sub}: logs and results go to {folder}")

    def instantiate_classes(self) -> None:
        """Build the classes, then record the reasoner's config (class_path / init_args, as the config files and
        command line gave it) in the stage module's hyper-parameters, which checkpoints carry: `vrp export` and
        `--ckpt_path` rebuild the frozen backbones by name from it. The module itself saves no nn.Module
        (``save_hyperparameters(ignore=["model"])``), so a module built in Python has no model config, as before."""
        super().instantiate_classes()
        dump = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml"))
        sub = self.config.get("subcommand")
        dump = dump[sub] if sub else dump
        reasoner = ((dump.get("model") or {}).get("init_args") or {}).get("model")
        if reasoner is not None:
            self.model.hparams["model"] = reasoner

    def _keep_given_model(self, sub: str) -> None:
        """With ``--ckpt_path``, LightningCLI replaces the model config by the checkpoint's saved hyper-parameters;
        what the user gave (config files and command line) wins instead, and the keys that differ are named."""
        given = self.given_config[sub].get("model")
        merged = self.config[sub].get("model")
        if given is None or merged is None or given == merged:
            return
        ours, theirs = dict(given.items()), dict(merged.items())
        changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        rank_zero_info(
            f"vrp {sub}: using the given model config, not the checkpoint's hyper-parameters, for "
            f"{', '.join('model.' + k for k in changed[:8])}{' ...' if len(changed) > 8 else ''}"
        )
        self.config[sub]["model"] = given

    def _lock_run_folders(self, *, checkpoints: bool) -> None:
        if self.trainer.global_rank != 0:
            return
        folders = runs.written_folders(self.trainer)
        if not checkpoints:
            folders = [folders[0]]  # an evaluation run writes only its own new folder
        runs.lock_folders(folders)
        for cb in self.trainer.checkpoint_callbacks if checkpoints else []:
            for p in remove_stale_temp_files(cb.dirpath) if getattr(cb, "dirpath", None) else []:
                rank_zero_info(f"removed {p}, a checkpoint write that a killed run left unfinished")

    def before_fit(self) -> None:
        self._lock_run_folders(checkpoints=True)

    def before_validate(self) -> None:
        self._lock_run_folders(checkpoints=False)

    def before_test(self) -> None:
        self._lock_run_folders(checkpoints=False)

    def before_predict(self) -> None:
        self._lock_run_folders(checkpoints=False)

    def after_fit(self) -> None:
        runs.release_folders()

    after_validate = after_test = after_predict = after_fit


def cli(args: list[str] | None = None, run: bool = True) -> VRPCLI:
    return VRPCLI(
        model_class=L.LightningModule,
        subclass_mode_model=True,
        datamodule_class=L.LightningDataModule,
        subclass_mode_data=True,
        trainer_defaults={"plugins": [{"class_path": "vrp.training.checkpoint.AtomicCheckpointIO"}]},
        save_config_kwargs={"overwrite": True},
        parser_class=VRPArgumentParser,
        parser_kwargs={"default_env": False},
        args=args,
        run=run,
    )


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
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
