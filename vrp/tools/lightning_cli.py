"""The Lightning commands of `vrp` (fit / validate / test / predict): `VRPCLI`, LightningCLI with the project's
always-on pieces, and `module_and_datamodule`, the stage module and datamodule of a config for the tools that run a
frozen part of the model over the data (`vrp cache`, `vrp track`).

Every component (model, vision encoder, fusion, LLM, datamodule, strategy, loggers) is a `class_path` in YAML.
The seed (`seed_everything`) is part of the config; checkpoints load with `weights_only=True`. validate / test /
predict write into a new folder of their own (`vrp.runs`).
"""

from __future__ import annotations

import re
from typing import NoReturn

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from vrp import runs
from vrp.evaluation.callbacks import TestResults
from vrp.models.io import check_finite, read_checkpoint
from vrp.training.callbacks import JsonlPredictions, NonFiniteGuard, RNGState
from vrp.training.checkpoint import remove_stale_temp_files
from vrp.training.preemption import StopOnSignal

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
        (``save_hyperparameters(ignore=["model"])``), so a module built in Python has no model config."""
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


def module_and_datamodule(configs: list[str], overrides: list[str], splits: list[str]) -> tuple:
    """The stage module and datamodule of stage YAML(s) ``configs`` (with ``overrides``), set up for ``splits``
    (records loaded, the vision encoder's preprocessing handed over) without a logger: what the
    tools that run a frozen part of the model over the data (`vrp cache`, `vrp track`) need."""
    args = [x for c in configs for x in ("--config", c)] + ["--trainer.logger=false", *overrides]
    cli = VRPCLI(args=args, run=False)  # stage 2 reads init_from only when it fits: not here
    module, dm = cli.model, cli.datamodule
    vision = module.model.vision
    dm.configure_preprocess(vision.image_size, tuple(vision.mean), tuple(vision.std))
    dm.prepare_data()
    dm.setup("fit")
    if "test" in splits:
        dm.setup("test")
    return module, dm
