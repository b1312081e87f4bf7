"""`vrp` command line: LightningCLI sub-commands (fit / validate / test / predict) plus a few tools.

    vrp fit --config experiments/embedded/pretrain.yaml [--trainer.devices=2 ...]
    vrp fit --config experiments/embedded/finetune.yaml --ckpt_path last      # resume
    vrp test --config experiments/embedded/finetune.yaml --ckpt_path runs/embedded/finetune/checkpoints/last.ckpt
    vrp prepare | export | cache | ask | lmms-task ...                          (see `vrp <tool> --help`)

Every component (model, vision encoder, fusion, LLM, datamodule, strategy, loggers) is a `class_path` in YAML.
The seed (`seed_everything`) is part of the config; checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

from vrp.training.callbacks import RNGState

TOOLS = {
    "prepare": "vrp.training.embedded",
    "export": "vrp.training.export",
    "cache": "vrp.training.cache",
    "ask": "vrp.evaluation.ask",
    "lmms-task": "vrp.evaluation.lmms_task",
}


class VRPCLI(LightningCLI):
    """LightningCLI with the project's always-on pieces: RNG state in checkpoints and atomic checkpoint writes."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RNGState, "rng_state")


def cli(args: list[str] | None = None, run: bool = True) -> VRPCLI:
    return VRPCLI(
        model_class=L.LightningModule,
        subclass_mode_model=True,
        datamodule_class=L.LightningDataModule,
        subclass_mode_data=True,
        trainer_defaults={"plugins": [{"class_path": "vrp.training.checkpoint.AtomicCheckpointIO"}]},
        save_config_kwargs={"overwrite": True},
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
    cli(argv)
