"""The ``eva`` command: one entry point for the offline jobs.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args)``.
Subcommand modules import heavy dependencies (torch, rclpy) inside ``run`` only, so
``eva --help`` stays fast and a GPU server without ROS never imports rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from importlib.metadata import version

# subcommand -> (module, one-line help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "score": ("eva_training.score", "EVA's executability reward of a decoded joint trajectory (.npy/.csv)."),
    "train": ("eva_training.train", "Train the IDM on RoboTwin-layout HDF5 episodes."),
    "eval": ("eva_training.evaluation", "Evaluate the IDM: accuracy, reward separation, gate calibration."),
    "data": ("eva_training.data", "Make training data in RoboTwin's HDF5 layout (synthetic MuJoCo episodes)."),
    "plan": ("eva_training.plan", "Imagine a video plan from an image and an instruction (best-of-N with the IDM)."),
    "convert": ("eva_training.convert", "Convert the released pickle checkpoints to safetensors directories, once."),
    "bag": ("eva_training.bags", "Write RoboTwin-layout episodes into a rosbag2 bag (MCAP or sqlite3); list a bag."),
    "replay": ("eva_training.replay", "Play a bag into the running stack and record its answers (needs ROS 2)."),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(prog="eva", description="EVA for ROS 2: offline jobs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('eva_training')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(sub)
        sub.set_defaults(module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand; errors exit 2 with a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The exact command, recorded by jobs that write run directories so a run can be repeated.
    args.command_line = shlex.join(["eva", *(sys.argv[1:] if argv is None else argv)])
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return importlib.import_module(args.module).run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"eva {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
