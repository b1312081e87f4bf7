"""`python -m lab <command>` / the `vrp-lab` console script: the lab's commands, each with its own flags
(`python -m lab <command> --help`)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "data": ("lab.data", "generate the synthetic benchmark and print its blind baselines"),
    "prepare": ("lab.prepare", "build the embedded default's tiny backbones and run stage 0 on them"),
    "probe": ("lab.probe", "train a stage-2 config on frozen features in memory; accuracy per template"),
    "ablate": ("lab.ablate", "run an ablation matrix on the embedded default and table its results"),
    "evidence": ("lab.evidence", "per-type accuracy of one model on several evaluation sets side by side"),
    "narrate": ("lab.narrate", "does a model prefer a clip's true event narrative over one with an object swapped"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m lab",
        description="The lab's commands: the synthetic world the embedded default is trained and measured on.",
        epilog="Each command takes its own flags: python -m lab <command> --help",
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)  # the command's own parser reads the rest
    command = p.parse_args(argv[:1]).command
    importlib.import_module(COMMANDS[command][0]).main(argv[1:])


if __name__ == "__main__":
    main()
