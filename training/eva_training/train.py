"""``eva train``: offline training jobs (``idm`` now; the world model's SFT and Flow-GRPO later)."""

from __future__ import annotations

import argparse

from eva_training.config import add_config_arguments, load_config
from eva_training.train_idm import IDMTrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``eva train idm [--config FILE] [--field value ...]``."""
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    idm = jobs.add_parser("idm", help="train the resnet_plus IDM on RoboTwin-layout HDF5 episodes",
                          description="Train the resnet_plus IDM. Flags override --config, which overrides defaults.")
    add_config_arguments(idm, IDMTrainConfig)


def run(args: argparse.Namespace) -> int:
    """Train and print where the checkpoint went."""
    from eva_training.train_idm import train

    config = load_config(IDMTrainConfig, args)
    checkpoint = train(config, command=args.command_line)
    print(f"checkpoint: {checkpoint}")
    return 0
